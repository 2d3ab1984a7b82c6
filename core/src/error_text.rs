//! One error's message with its sources'. Libraries such as reqwest, tonic
//! and cggmp24 keep the useful part of a failure ("connection refused", a
//! certificate that does not parse, the abort reason) in an error's source,
//! so a message built from the top error alone says too little. Shared by
//! every crate of the workspace, since each depends on this one.

use std::error::Error;

/// `e`'s message followed by each source's, joined with ": ". A source whose
/// text is already in the message (wrappers often repeat their cause) is
/// left out, so nothing is said twice.
pub fn with_sources(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn Error + 'static))
        }
    }

    #[test]
    fn sources_follow_the_message_and_repeats_are_left_out() {
        let e = Layer(
            "request failed",
            Some(Box::new(Layer("connect", Some(Box::new(Layer("connection refused", None)))))),
        );
        assert_eq!(with_sources(&e), "request failed: connect: connection refused");
        let repeating = Layer("transport error: connection refused", Some(Box::new(Layer("connection refused", None))));
        assert_eq!(with_sources(&repeating), "transport error: connection refused");
        assert_eq!(with_sources(&Layer("alone", None)), "alone");
    }
}
