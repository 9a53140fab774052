//! Prompts: a text put into a template (`prompt: 'This news article: "{text}" means in one
//! word:"'`) before it is tokenized, and which of the prompted sequence's tokens mean pooling
//! averages.
//!
//! * The ids are the tokenizer's own for the filled string (default special tokens), so a
//!   prompted text gets exactly the ids the HF tokenizer gives `prefix + text + suffix`.
//! * Truncation cuts the text, never the template: when the filled string has more than
//!   `max_tokens` tokens, the text is cut at the start of its first token that does not fit
//!   (a token boundary of the filled string's own tokenization) and the template is filled
//!   with what is left and tokenized again; this repeats while it is still too long (a cut can
//!   change how the tokens at the new boundary merge). So the last tokens are always the
//!   template's (`pooling: last` lands on its last token), and the ids are always the tokenizer's
//!   own for a filled string. A template that leaves no room for one token of text is an error.
//! * A token comes from the text when at least one of its bytes does (tokenizer offsets); a
//!   token straddling the boundary (`▁"Wall`, where the template's quote and the text's first
//!   word merged) carries text, so it counts as text. Tokens the tokenizer adds (BOS, CLS, SEP:
//!   no bytes of the input) and the template's own tokens are not text. `mean_over: text` (the
//!   default with a prompt) averages the text's tokens, from the first to the last;
//!   `mean_over: sequence` averages every token of the prompted sequence, as an unprompted
//!   mean of the filled string would.

use std::ops::Range;

use llmembed_core::{Error, Result};

use crate::embedder::{Embedder, MeanOver};

/// The placeholder a template holds exactly once.
pub const PLACEHOLDER: &str = "{text}";

/// A template split around its one `{text}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Prompt {
    prefix: String,
    suffix: String,
}

impl Prompt {
    /// The template, checked: exactly one `{text}` (errors name the `prompt` param).
    pub(crate) fn parse(template: &str) -> Result<Prompt> {
        let found = template.matches(PLACEHOLDER).count();
        if found != 1 {
            return Err(Error::param(
                "prompt",
                format!(
                    "the template must hold `{PLACEHOLDER}` exactly once, where the text goes; \
                     it holds it {found} times: {template:?}"
                ),
            ));
        }
        let (prefix, suffix) = template
            .split_once(PLACEHOLDER)
            .expect("the placeholder was counted");
        Ok(Prompt {
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
        })
    }

    fn fill(&self, text: &str) -> String {
        let mut s = String::with_capacity(self.prefix.len() + text.len() + self.suffix.len());
        s.push_str(&self.prefix);
        s.push_str(text);
        s.push_str(&self.suffix);
        s
    }
}

/// A text's tokens as the stage embeds them ([`ExtractParams::tokens`](crate::ExtractParams)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// The tokens mean pooling averages (all of them without a prompt).
    pub mean: Range<usize>,
    /// Whether the text was cut to fit `max_tokens`.
    pub truncated: bool,
}

/// The tokens of `text`, put into `prompt` if there is one, at most `max_tokens` of them.
pub(crate) fn tokenize(
    model: &dyn Embedder,
    prompt: Option<&Prompt>,
    mean_over: MeanOver,
    text: &str,
    max_tokens: usize,
) -> Result<Tokens> {
    let Some(prompt) = prompt else {
        let (ids, truncated) = model.tokenize(text, max_tokens)?;
        return Ok(Tokens {
            mean: 0..ids.len(),
            ids,
            truncated,
        });
    };
    let max_tokens = max_tokens.min(model.max_sequence());
    let start = prompt.prefix.len();
    let mut keep = text.len();
    loop {
        let filled = prompt.fill(&text[..keep]);
        let (ids, offsets) = model.encode_with_offsets(&filled)?;
        let span = start..start + keep;
        let from_text: Vec<usize> = offsets
            .iter()
            .enumerate()
            .filter(|(_, (a, b))| a < b && *a < span.end && *b > span.start)
            .map(|(i, _)| i)
            .collect();
        let (Some(&first), Some(&last)) = (from_text.first(), from_text.last()) else {
            return Err(Error::param(
                "prompt",
                format!(
                    "no token of the filled template comes from the text {:?} (the tokenizer gave no \
                     offsets inside it)",
                    &text[..keep]
                ),
            ));
        };
        if ids.len() <= max_tokens {
            let mean = match mean_over {
                MeanOver::Text => first..last + 1,
                MeanOver::Sequence => 0..ids.len(),
            };
            return Ok(Tokens {
                ids,
                mean,
                truncated: keep < text.len(),
            });
        }
        let excess = ids.len() - max_tokens;
        let template_tokens = ids.len() - from_text.len();
        // The first text token that does not fit; cut the text where it starts.
        keep = from_text
            .len()
            .checked_sub(excess)
            .filter(|&k| k > 0)
            .map(|k| floor_char_boundary(text, offsets[from_text[k]].0.saturating_sub(start)))
            .filter(|&cut| cut > 0 && cut < keep)
            .ok_or_else(|| {
                Error::param(
                    "max_tokens",
                    format!(
                        "{max_tokens} tokens leave no room for the text: the prompt's template \
                         alone takes {template_tokens} (special tokens included)"
                    ),
                )
            })?;
    }
}

/// The largest char boundary of `s` at or below `at` (offsets are byte offsets and may fall
/// inside a character a byte-level token split).
fn floor_char_boundary(s: &str, mut at: usize) -> usize {
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_holds_the_placeholder_once() {
        let p = Prompt::parse("This news article: \"{text}\" means in one word:\"").unwrap();
        assert_eq!(p.prefix, "This news article: \"");
        assert_eq!(p.suffix, "\" means in one word:\"");
        assert_eq!(
            p.fill("Hi"),
            "This news article: \"Hi\" means in one word:\""
        );
        assert_eq!(Prompt::parse("{text}").unwrap().fill("x"), "x");
        // Other braces are the template's own characters.
        assert_eq!(
            Prompt::parse("{a} {text} {}").unwrap().fill("x"),
            "{a} x {}"
        );
        for bad in [
            "no placeholder",
            "",
            "{text} and {text}",
            "{ text }",
            "{TEXT}",
        ] {
            let e = Prompt::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("prompt") && e.contains("exactly once"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn cuts_fall_on_char_boundaries() {
        let s = "aé東";
        assert_eq!(floor_char_boundary(s, 2), 1);
        assert_eq!(floor_char_boundary(s, 3), 3);
        assert_eq!(floor_char_boundary(s, 5), 3);
        assert_eq!(floor_char_boundary(s, 6), 6);
    }
}
