//! SDK errors as [`StateError`]s: failed conditions, throttling, cancelled transactions
//! and their reason codes. Descriptions carry codes and statuses, never request values.

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::CancellationReason;

use crate::state::StateError;

/// Service error codes that mean "slow down" rather than "unavailable".
const THROTTLING_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
];

/// The request was refused because its condition expression did not hold.
pub(super) fn is_condition_failed<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    matches!(e, SdkError::ServiceError(_)) && e.code() == Some("ConditionalCheckFailedException")
}

/// Service errors are described by code and HTTP status only: their messages can echo
/// request values.
pub(super) fn classify<E, R>(op: &str, e: &SdkError<E, R>) -> StateError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ServiceError(_) => {
            let code = e.code().unwrap_or("unknown error");
            if THROTTLING_CODES.contains(&code) {
                StateError::Throttled(format!("{op}: {code}"))
            } else {
                StateError::Unavailable(format!("{op}: {code}"))
            }
        }
        SdkError::TimeoutError(_) => StateError::Unavailable(format!("{op}: timed out")),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StateError::Unavailable(format!("{op}: {}", DisplayErrorContext(e)))
        }
        _ => StateError::Unavailable(format!(
            "{op}: request not sent: {}",
            DisplayErrorContext(e)
        )),
    }
}

/// A cancelled transaction's reason codes, by item in request order.
pub(super) struct Cancelled(Vec<String>);

impl Cancelled {
    /// Whether item `index`'s condition did not hold.
    pub(super) fn condition_failed(&self, index: usize) -> bool {
        self.0.get(index).map(String::as_str) == Some("ConditionalCheckFailed")
    }

    /// The error for a cancellation the caller does not handle.
    pub(super) fn error(&self) -> StateError {
        cancelled_error(&self.0)
    }
}

/// A failed TransactWriteItems as its cancellation reasons, or, when it was not
/// cancelled, as the error to return.
pub(super) fn cancellation<R: std::fmt::Debug>(
    e: &SdkError<TransactWriteItemsError, R>,
) -> Result<Cancelled, StateError> {
    match e.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => Ok(Cancelled(
            cancellation_codes(cancelled.cancellation_reasons(), cancelled.message()),
        )),
        _ => Err(classify("TransactWriteItems", e)),
    }
}

/// A request the SDK refused to build (a required field missing).
pub(super) fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> StateError {
    StateError::Unavailable(format!("request not built: {e}"))
}

/// Reason codes by item, in request order. Some DynamoDB-compatible servers only
/// report them in the message: "… cancellation reasons [None, ConditionalCheckFailed]".
pub(super) fn cancellation_codes(
    reasons: &[CancellationReason],
    message: Option<&str>,
) -> Vec<String> {
    if !reasons.is_empty() {
        return reasons
            .iter()
            .map(|r| r.code().unwrap_or("None").to_string())
            .collect();
    }
    message
        .and_then(|m| {
            let start = m.rfind('[')?;
            let end = start + m[start..].find(']')?;
            Some(
                m[start + 1..end]
                    .split(',')
                    .map(|c| c.trim().to_string())
                    .collect(),
            )
        })
        .unwrap_or_default()
}

/// A transaction cancelled for reasons other than our lost lease.
pub(super) fn cancelled_error(codes: &[String]) -> StateError {
    let summary = codes.join(", ");
    let throttled = codes.iter().any(|c| {
        matches!(
            c.as_str(),
            "ThrottlingError" | "ProvisionedThroughputExceeded" | "RequestLimitExceeded"
        )
    });
    if throttled {
        StateError::Throttled(format!("TransactWriteItems cancelled: [{summary}]"))
    } else {
        StateError::Unavailable(format!("TransactWriteItems cancelled: [{summary}]"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellation_codes_from_message_when_reasons_are_absent() {
        let codes = cancellation_codes(
            &[],
            Some(
                "Transaction cancelled, please refer cancellation reasons for specific reasons [None, ConditionalCheckFailed]",
            ),
        );
        assert_eq!(codes, vec!["None", "ConditionalCheckFailed"]);
    }
}
