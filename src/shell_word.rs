//! Words of the commands spafit's messages suggest, written as a POSIX shell reads them back.

/// `text` as one word of a shell command: as it is where it holds only characters no POSIX
/// shell treats specially (letters, digits and `_-./:+@%,=`), else in single quotes, each
/// single quote inside written as `'\''`. A suggested command pasted into a shell then gets
/// exactly `text` (a path with spaces, a column named `it's`).
pub fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_alphanumeric() || "_-./:+@%,=".contains(c));
    match plain {
        true => text.to_string(),
        false => format!("'{}'", text.replace('\'', "'\\''")),
    }
}

/// [`shell_word`] for a path or another OS string: one that is not UTF-8 (a file name in
/// Latin-1) is written in `$'…'` quotes with its other bytes as `\xHH`, which bash, zsh and
/// ksh read back as those bytes (plain `sh` may not).
pub fn shell_word_os(text: &std::ffi::OsStr) -> String {
    use std::os::unix::ffi::OsStrExt;
    let bytes = text.as_bytes();
    if let Ok(text) = std::str::from_utf8(bytes) {
        return shell_word(text);
    }
    let mut word = String::from("$'");
    for &byte in bytes {
        match byte {
            b'\\' => word.push_str("\\\\"),
            b'\'' => word.push_str("\\'"),
            0x20..=0x7e => word.push(byte as char),
            _ => word.push_str(&format!("\\x{byte:02x}")),
        }
    }
    word.push('\'');
    word
}

/// `flag` with `value` as words of a shell command: `--flag value`, or `--flag=value` where
/// the value starts with `-`, which the command line would read as a flag of its own.
pub fn shell_flag(flag: &str, value: &std::ffi::OsStr) -> String {
    use std::os::unix::ffi::OsStrExt;
    let word = shell_word_os(value);
    match value.as_bytes().first() == Some(&b'-') {
        true => format!("{flag}={word}"),
        false => format!("{flag} {word}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{shell_flag, shell_word, shell_word_os};

    /// What `shell` prints of `word` (`printf %s word`), and whether it ran.
    fn printed_by(shell: &str, word: &str) -> std::process::Output {
        std::process::Command::new(shell)
            .arg("-c")
            .arg(format!("printf %s {word}"))
            .output()
            .unwrap()
    }

    /// What `sh` makes of the word is the text itself, for texts a shell would otherwise
    /// split, expand or end.
    #[test]
    fn a_shell_reads_each_word_back_as_its_text() {
        let texts = [
            "plain",
            "data/MNLI dev.tsv",
            "it's",
            "''",
            "$HOME",
            "`ls`",
            "a*b?[c]",
            "~user",
            "x;y|z&",
            "tab\tand\nnewline",
            "\\",
            "",
            "ünïcödé-name",
            "#hash",
            "a=b,c:d@e%f+g",
        ];
        for text in texts {
            let word = shell_word(text);
            let out = printed_by("sh", &word);
            assert!(out.status.success(), "{text:?} as {word}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), text, "{word}");
        }
        assert_eq!(shell_word("glue/MNLI"), "glue/MNLI");
    }

    /// A file name that is not UTF-8 comes back as its bytes from bash; a value that starts
    /// with `-` stays the flag's value.
    #[test]
    fn bytes_and_leading_dashes_come_back_as_given() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let latin1 = OsStr::from_bytes(b"caf\xe9 'n' \\ dir");
        let word = shell_word_os(latin1);
        let out = printed_by("bash", &word);
        assert_eq!(out.stdout, latin1.as_bytes(), "{word}");
        assert_eq!(shell_flag("--glue-dir", OsStr::new("-g")), "--glue-dir=-g");
        assert_eq!(shell_flag("--glue-dir", OsStr::new("g")), "--glue-dir g");
        assert_eq!(
            shell_flag("--glue-dir", OsStr::new("-g x")),
            "--glue-dir='-g x'"
        );
        assert_eq!(
            shell_flag("--text-column", OsStr::new("it's")),
            "--text-column 'it'\\''s'"
        );
    }
}
