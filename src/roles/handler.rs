//! What a subscriber's handler returns: nothing (it cannot fail) or a [`HandlerResult`], whose
//! [`HandlerError`] any error converts into with `?`, keeping the error's type name for the
//! `process` span's `error.type`.
//!
//! # Why one error type
//!
//! A handler written as a closure, `|message| async move { store(&message).await?; Ok(()) }`,
//! names no error type: `?` converts into whatever the function returns, and `Ok(())` says
//! nothing of `Err`. Rust infers no default for a type parameter, so a route generic over the
//! error type `E` cannot compile that closure without `Ok::<(), E>(())` (E0282). With one error
//! type the closure's result is `Result<(), HandlerError>`, and `?` converts any error that
//! displays (`std::io::Error`, `rumqttc`'s `ClientError`, a boxed error, `anyhow::Error`, a
//! `String`) into it. The other way round cannot be had at the same time: once a route accepts
//! `Result<(), E>` for every `E`, `Ok(())` has no single meaning again. A named handler
//! therefore returns [`HandlerResult`] (and converts with `?` or `.into()`), not its own error
//! type.
//!
//! `HandlerError` does not implement `Display` (nor `std::error::Error`): its conversion from
//! every `E: Display` would otherwise include itself, which Rust's `From<T> for T` already
//! covers (the same trade-off as `anyhow::Error`, which is no `std::error::Error`). Its
//! [`HandlerError::message`] and [`HandlerError::error_type`] say what it holds.

use std::fmt::{self, Display};

/// The error of a handler: the `error.type` of its `process` span (the name of the error type it
/// was made from, `std::any::type_name`) and the status message (the error's `Display` text).
///
/// Made by `?` or `.into()` from any error that implements `Display`:
///
/// ```
/// use rumqttc_opentelemetry::v5::{HandlerError, HandlerResult, Message};
///
/// async fn store(message: Message) -> HandlerResult {
///     if message.payload().is_empty() {
///         return Err("an empty reading".into());
///     }
///     std::fs::write("/dev/null", message.payload())?;
///     Ok(())
/// }
///
/// let error = HandlerError::from(std::io::Error::other("disk full"));
/// assert_eq!(error.error_type(), "std::io::error::Error");
/// assert_eq!(error.message(), "disk full");
/// ```
pub struct HandlerError {
    error_type: &'static str,
    message: String,
}

impl HandlerError {
    /// The `error.type` recorded for it: the name of the type it was made from (for example
    /// `std::io::error::Error`, `anyhow::Error`, `&str`).
    pub fn error_type(&self) -> &'static str {
        self.error_type
    }

    /// The error's `Display` text, the `process` span's status message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: Display> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self {
            error_type: std::any::type_name::<E>(),
            message: error.to_string(),
        }
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("error_type", &self.error_type)
            .field("message", &self.message)
            .finish()
    }
}

/// What a named handler returns: `Ok(())`, or an error that marks its `process` span.
pub type HandlerResult = Result<(), HandlerError>;

mod sealed {
    /// The outcome of a handler run, for the worker.
    pub trait Outcome {
        fn outcome(self) -> super::HandlerResult;
    }
}

/// What the future of a handler may return: `()`, for a handler that cannot fail, or a
/// [`HandlerResult`]. Implemented for those two only (so that `Ok(())` in a closure needs no
/// type annotation); not implementable outside this crate.
#[diagnostic::on_unimplemented(
    message = "a handler's future must return `()` or `HandlerResult`, not `{Self}`",
    label = "the future of this handler returns `{Self}`",
    note = "declare the handler `-> HandlerResult` and convert its errors with `?` or `.into()`, \
            or register it through a closure: `|m| async move {{ Ok(handler(m).await?) }}`"
)]
pub trait HandlerOutput: sealed::Outcome {}

impl sealed::Outcome for () {
    fn outcome(self) -> HandlerResult {
        Ok(())
    }
}

impl HandlerOutput for () {}

impl sealed::Outcome for HandlerResult {
    fn outcome(self) -> HandlerResult {
        self
    }
}

impl HandlerOutput for HandlerResult {}

#[cfg(test)]
mod tests {
    use super::sealed::Outcome;
    use super::*;

    #[test]
    fn an_error_is_named_after_its_type() {
        let error = HandlerError::from(std::io::Error::other("disk full"));
        assert_eq!(error.error_type(), "std::io::error::Error");
        assert_eq!(error.message(), "disk full");
        let boxed: Box<dyn std::error::Error + Send + Sync> = "no route".into();
        let error = HandlerError::from(boxed);
        assert!(
            error
                .error_type()
                .starts_with("alloc::boxed::Box<dyn core::error::Error")
        );
        assert_eq!(error.message(), "no route");
        assert_eq!(HandlerError::from("bad").error_type(), "&str");
        assert!(format!("{error:?}").contains("no route"));
    }

    #[test]
    fn unit_and_results_are_outcomes() {
        assert!(().outcome().is_ok());
        assert!(Ok(()).outcome().is_ok());
        let failed: HandlerResult = Err("x".into());
        assert_eq!(failed.outcome().map_err(|e| e.message), Err("x".to_owned()));
    }
}
