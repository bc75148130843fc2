//! SDK errors as [`StateError`]s: throttling, unavailability and failed conditions,
//! described by code and status only (messages can echo request values).

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use super::StateError;

pub(super) const THROTTLING_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
];

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

pub(super) fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> StateError {
    StateError::Unavailable(format!("request not built: {e}"))
}

/// Reason codes by item, in request order. Some DynamoDB-compatible servers only
/// report them in the message: "… cancellation reasons [None, ConditionalCheckFailed]".
pub(super) fn cancellation_codes(
    reasons: &[aws_sdk_dynamodb::types::CancellationReason],
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
