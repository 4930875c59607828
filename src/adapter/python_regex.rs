//! Regular expressions written for Python's `re` (PEFT's `target_modules`, `rank_pattern`,
//! `alpha_pattern`), compiled with Rust's regex only where the two read them alike: a pattern
//! that compiles in both but matches other names would pick other modules without a word.

use regex::Regex;

/// `pattern` inside `wrapped` (`{}` marks where: the anchors PEFT's matching adds), compiled,
/// or why not, in words for an error that names the pattern.
pub(crate) fn compile_python_pattern(pattern: &str, wrapped: &str) -> Result<Regex, String> {
    if let Some(why) = reads_otherwise(pattern) {
        return Err(format!(
            "`{pattern}` would match other modules here than in Python: {why}; escape it \
             (`\\[`) or write the set out"
        ));
    }
    Regex::new(&wrapped.replace("{}", pattern)).map_err(|e| {
        let unsupported = ["(?=", "(?!", "(?<=", "(?<!", "(?P="]
            .iter()
            .any(|s| pattern.contains(s))
            || (1..=9).any(|d| pattern.contains(&format!("\\{d}")));
        match unsupported {
            true => format!(
                "`{pattern}` does not compile here (Rust's regex has no look-around or \
                 back-references): {e}"
            ),
            false => format!("`{pattern}` does not compile here: {e}"),
        }
    })
}

/// Why Rust's regex would read `pattern` otherwise than Python's `re`, if it would: inside a
/// character class Rust reads `[` as a nested class and `&&`, `--`, `~~` as set operations,
/// where Python reads the characters themselves (and warns of a "possible nested set").
fn reads_otherwise(pattern: &str) -> Option<String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    let mut in_class = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            i += 2;
            continue;
        }
        if !in_class {
            if c == '[' {
                in_class = true;
                i += 1;
                // A `]` first in a class (after any `^`) is the character, in both.
                if chars.get(i) == Some(&'^') {
                    i += 1;
                }
                if chars.get(i) == Some(&']') {
                    i += 1;
                }
                continue;
            }
        } else {
            match c {
                ']' => in_class = false,
                '[' => {
                    return Some(
                        "a `[` inside a character class is a nested class to Rust's regex, \
                         the character itself to Python"
                            .into(),
                    )
                }
                '&' | '-' | '~' if chars.get(i + 1) == Some(&c) => {
                    return Some(format!(
                        "`{c}{c}` inside a character class is a set operation to Rust's \
                         regex, two characters to Python"
                    ))
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Python reads otherwise is refused, naming the construct; what it reads alike
    /// compiles and matches as Python matches it (checked there with `re.fullmatch`).
    #[test]
    fn sets_python_reads_otherwise_are_refused() {
        for (pattern, construct) in [
            (r"layer\.[[3]]\.query", "nested class"),
            (r"layer\.[0-5&&3]\.query", "`&&`"),
            (r"layer\.[0-5--3]\.query", "`--`"),
            (r"layer\.[0-5~~3]\.query", "`~~`"),
            (r"[[:digit:]]", "nested class"),
            (r"[^a[]", "nested class"),
        ] {
            let e = compile_python_pattern(pattern, "^{}$").unwrap_err();
            assert!(
                e.contains(construct) && e.contains(pattern),
                "{pattern}: {e}"
            );
        }
        for (pattern, name, matches) in [
            (r"layer\.[0-2]\.query", "layer.1.query", true),
            (r"layer\.[0-2]\.query", "layer.3.query", false),
            // `]` first in a class, and escaped brackets, are characters in both.
            (r"a[]b]c", "a]c", true),
            (r"a[^]]c", "a]c", false),
            (r"a[\[]c", "a[c", true),
            (r"a\[[0-9]\]", "a[7]", true),
            (r"x-y|a&&b", "a&&b", true),
        ] {
            let re = compile_python_pattern(pattern, "^(?:{})$").unwrap();
            assert_eq!(re.is_match(name), matches, "{pattern} on {name}");
        }
        let e = compile_python_pattern(r"(?<=self)\.value", "^{}$").unwrap_err();
        assert!(e.contains("look-around"), "{e}");
        let e = compile_python_pattern(r"query{,1}(", "^{}$").unwrap_err();
        assert!(
            !e.contains("look-around") && e.contains("does not compile"),
            "{e}"
        );
    }
}
