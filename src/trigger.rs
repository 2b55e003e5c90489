//! Trigger rules (contract section 3): does a webhook fire for an image tag. Pure.

use regex::{Regex, RegexBuilder};

/// Longest expression accepted, in characters (the table's check constraint says the same).
pub const MAX_EXPRESSION_CHARS: usize = 256;
/// Most tags a `tags` rule may list.
pub const MAX_TAGS: usize = 10;
/// Compiled-program budget for one expression; a pathological pattern fails to compile instead
/// of taking memory from every other webhook.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// The three kinds of rule; also the `trigger` label of `tagcast_trigger_evaluations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerKind {
    All,
    Expression,
    Tags,
}

impl TriggerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::All => "all",
            TriggerKind::Expression => "expression",
            TriggerKind::Tags => "tags",
        }
    }
}

/// A rule ready to evaluate: an expression is compiled once, when the row is loaded.
#[derive(Debug, Clone)]
pub enum Trigger {
    All,
    /// Anchored as `^(?:expr)$`, so it must match the whole tag.
    Expression(Regex),
    Tags(Vec<String>),
}

/// Why a webhook row's rule cannot be used; recorded as the delivery's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    #[error("unknown trigger_type {0:?}")]
    UnknownType(String),
    #[error("trigger_type expression without trigger_expression")]
    MissingExpression,
    #[error("trigger_expression is longer than {MAX_EXPRESSION_CHARS} characters")]
    ExpressionTooLong,
    #[error("trigger_expression does not compile: {0}")]
    InvalidExpression(String),
    #[error("trigger_type tags needs 1 to {MAX_TAGS} tags, got {0}")]
    TagCount(usize),
}

impl Trigger {
    /// Builds the rule from the columns of a `webhooks` row.
    pub fn from_row(
        trigger_type: &str,
        expression: Option<&str>,
        tags: Option<&[String]>,
    ) -> Result<Trigger, TriggerError> {
        match trigger_type {
            "all" => Ok(Trigger::All),
            "expression" => {
                let expression = expression.ok_or(TriggerError::MissingExpression)?;
                if expression.chars().count() > MAX_EXPRESSION_CHARS {
                    return Err(TriggerError::ExpressionTooLong);
                }
                // On its own first: an error then shows the user's text, not the anchored
                // wrapper, and an expression that only compiles inside the wrapper (`a)|(b`
                // becomes `^(?:a)|(b)$`, which no longer anchors the whole tag) is refused.
                compile(expression)?;
                compile(&format!("^(?:{expression})$")).map(Trigger::Expression)
            }
            "tags" => {
                let tags = tags.unwrap_or_default();
                if tags.is_empty() || tags.len() > MAX_TAGS {
                    return Err(TriggerError::TagCount(tags.len()));
                }
                Ok(Trigger::Tags(tags.to_vec()))
            }
            other => Err(TriggerError::UnknownType(other.to_owned())),
        }
    }

    pub fn kind(&self) -> TriggerKind {
        match self {
            Trigger::All => TriggerKind::All,
            Trigger::Expression(_) => TriggerKind::Expression,
            Trigger::Tags(_) => TriggerKind::Tags,
        }
    }

    pub fn fires(&self, tag: &str) -> bool {
        match self {
            Trigger::All => true,
            Trigger::Expression(re) => re.is_match(tag),
            Trigger::Tags(tags) => tags.iter().any(|t| t == tag),
        }
    }
}

fn compile(pattern: &str) -> Result<Regex, TriggerError> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| TriggerError::InvalidExpression(one_line(&e.to_string())))
}

/// regex's errors span several lines with a caret diagram; an access record wants one line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expression(e: &str) -> Trigger {
        Trigger::from_row("expression", Some(e), None).unwrap()
    }

    #[test]
    fn expressions_match_the_whole_tag_case_sensitively() {
        let cases = [
            ("release-v.*", "release-v1.2", true),
            ("release-v.*", "prerelease-v1", false),
            ("release-v.*", "Release-v1", false),
            ("release-v.*", "release-v", true),
            ("release-v.*", "release-", false),
            ("v[0-9]+", "v12", true),
            ("v[0-9]+", "v12-rc", false),
            ("a|b", "a", true),
            ("a|b", "ab", false),
            ("(?i)latest", "LATEST", true),
            (".*", "anything", true),
        ];
        for (rule, tag, fires) in cases {
            assert_eq!(expression(rule).fires(tag), fires, "{rule} against {tag}");
        }
    }

    #[test]
    fn tags_match_exactly() {
        let rule = Trigger::from_row("tags", None, Some(&["latest".into(), "v1".into()])).unwrap();
        let cases = [
            ("latest", true),
            ("v1", true),
            ("v1.0", false),
            ("Latest", false),
            ("", false),
        ];
        for (tag, fires) in cases {
            assert_eq!(rule.fires(tag), fires, "{tag}");
        }
    }

    #[test]
    fn all_always_fires() {
        let rule = Trigger::from_row("all", None, None).unwrap();
        assert!(rule.fires("latest") && rule.fires("x"));
        assert_eq!(rule.kind(), TriggerKind::All);
    }

    #[test]
    fn unusable_rows_name_the_problem() {
        let eleven: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
        /// (trigger_type, expression, tags, the error expected)
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            Option<&'a [String]>,
            fn(&TriggerError) -> bool,
        );
        let cases: Vec<Case> = vec![
            (
                "expression",
                Some("release-(v"),
                None,
                // One line, naming the expression as the user wrote it.
                |e| {
                    matches!(e, TriggerError::InvalidExpression(m)
                        if !m.contains('\n') && m.contains("release-(v") && !m.contains("^(?:"))
                },
            ),
            // Valid only inside the anchoring wrapper, where it would escape it.
            ("expression", Some("a)|(b"), None, |e| {
                matches!(e, TriggerError::InvalidExpression(_))
            }),
            ("expression", None, None, |e| {
                *e == TriggerError::MissingExpression
            }),
            ("expression", Some(&*"a".repeat(257).leak()), None, |e| {
                *e == TriggerError::ExpressionTooLong
            }),
            ("expression", Some("(a{1000}){1000}"), None, |e| {
                matches!(e, TriggerError::InvalidExpression(_))
            }),
            ("tags", None, Some(&[]), |e| *e == TriggerError::TagCount(0)),
            ("tags", None, None, |e| *e == TriggerError::TagCount(0)),
            ("tags", None, Some(eleven.as_slice()), |e| {
                *e == TriggerError::TagCount(11)
            }),
            (
                "sometimes",
                None,
                None,
                |e| matches!(e, TriggerError::UnknownType(t) if t == "sometimes"),
            ),
        ];
        for (kind, expr, tags, check) in cases {
            let err = Trigger::from_row(kind, expr, tags).expect_err(kind);
            assert!(check(&err), "{kind} {expr:?}: {err}");
        }
    }

    proptest::proptest! {
        /// A literal expression (escaped) fires exactly for that tag, never for a longer one.
        #[test]
        fn literal_expressions_match_only_themselves(tag in "[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", suffix in "[a-z]{1,3}") {
            let rule = expression(&regex::escape(&tag));
            proptest::prop_assert!(rule.fires(&tag));
            let longer = format!("{tag}{suffix}");
            let prefixed = format!("{suffix}{tag}");
            proptest::prop_assert!(!rule.fires(&longer));
            proptest::prop_assert!(!rule.fires(&prefixed));
        }
    }
}
