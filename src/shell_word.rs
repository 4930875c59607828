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

#[cfg(test)]
mod tests {
    use super::shell_word;

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
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {word}"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{text:?} as {word}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), text, "{word}");
        }
        assert_eq!(shell_word("glue/MNLI"), "glue/MNLI");
    }
}
