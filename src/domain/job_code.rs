//! Every stable code a background job records: on a task (`error.code`: why it failed, or
//! why it is waiting) and in the log of a webhook delivery that gave up. A different list
//! from [`super::ErrorCode`], which holds the codes of refused *requests*, each with an HTTP
//! status; none of these is ever an answer's code.

use std::fmt;

/// A stable, machine-readable reason a job waits or ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum JobCode {
    /// The client canceled the task.
    Canceled,
    /// The provider kept failing until the attempts ran out, or is not configured here.
    ProviderUnavailable,
    /// The provider's account is rate limited or out of credits: submission is paused.
    ProviderPaused,
    /// The provider refused for a reason that may pass; the task is retried.
    ProviderRetrying,
    /// The provider cannot be reached at all; nothing was sent.
    ProviderUnreachable,
    /// The provider's create window is full: the task waits for a free slot.
    RateWindowFull,
    /// A daily credit budget (the key's or the global one) is spent: the task waits for
    /// it to reset, or fails, by the operator's policy.
    BudgetExhausted,
    /// An input image's host name does not resolve (a typo, or a name that never existed).
    InputUnreachable,
    /// An input image's URL answered 4xx (404, 403, 410, …), or an upload is gone.
    InputNotFound,
    /// An input image's URL answered with something that is not an image.
    InputNotImage,
    /// An input image could not be read for now (5xx, timeout, connection trouble): retried.
    InputUnavailable,
    /// An input image is refused as it is (a private address, too large, too many
    /// redirects, an image over the limits).
    InputUnusable,
    /// The create request got no answer after it was sent.
    SubmitAmbiguous,
    /// darkroom stopped while the create request was out.
    SubmitInterrupted,
    /// An ambiguous create was never confirmed by a callback.
    SubmitUnconfirmed,
    /// An ambiguous create was submitted again, as configured.
    ResubmittedUnconfirmed,
    /// No result from the provider within the task deadline.
    DeadlineExceeded,
    /// The provider answered, again and again, that it has no such task.
    ProviderTaskMissing,
    /// The provider reported that the task failed.
    ProviderFailed,
    /// A result could not be downloaded.
    ResultDownloadFailed,
    /// The temporary file a result is spooled to could not be used.
    SpoolFailed,
    /// The provider reported success without any result.
    NoResults,
    /// A result is larger than the limit.
    ResultTooLarge,
    /// A result is not a usable image.
    ResultNotAnImage,
    /// Inline results were lost before they were stored.
    ResultsLost,
    /// The bucket is full (the task waits).
    StorageFull,
    /// The bucket is read-only (the task waits).
    StorageReadOnly,
    /// The bucket reports errors (the task waits).
    StorageUnavailable,
    /// A webhook URL the guarded client refuses (private address, bad scheme).
    WebhookRefused,
    /// A webhook attempt failed (no 2xx answer); after the last one, it is not delivered.
    WebhookFailed,
    /// The task of a webhook no longer exists.
    WebhookTaskMissing,
    /// A code the provider's client named (`provider_401`, `prompt_blocked`), kept as is.
    Provider(String),
}

impl JobCode {
    /// The code as clients see it on a task (`deadline_exceeded`).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Canceled => "canceled",
            Self::ProviderUnavailable => "provider_unavailable",
            Self::ProviderPaused => "provider_paused",
            Self::ProviderRetrying => "provider_retrying",
            Self::ProviderUnreachable => "provider_unreachable",
            Self::RateWindowFull => "rate_window_full",
            Self::BudgetExhausted => "budget_exhausted",
            Self::InputUnreachable => "input_unreachable",
            Self::InputNotFound => "input_not_found",
            Self::InputNotImage => "input_not_image",
            Self::InputUnavailable => "input_unavailable",
            Self::InputUnusable => "input_unusable",
            Self::SubmitAmbiguous => "submit_ambiguous",
            Self::SubmitInterrupted => "submit_interrupted",
            Self::SubmitUnconfirmed => "submit_unconfirmed",
            Self::ResubmittedUnconfirmed => "resubmitted_unconfirmed",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::ProviderTaskMissing => "provider_task_missing",
            Self::ProviderFailed => "provider_failed",
            Self::ResultDownloadFailed => "result_download_failed",
            Self::SpoolFailed => "spool_failed",
            Self::NoResults => "no_results",
            Self::ResultTooLarge => "result_too_large",
            Self::ResultNotAnImage => "result_not_an_image",
            Self::ResultsLost => "results_lost",
            Self::StorageFull => "storage_full",
            Self::StorageReadOnly => "storage_read_only",
            Self::StorageUnavailable => "storage_unavailable",
            Self::WebhookRefused => "webhook_refused",
            Self::WebhookFailed => "webhook_failed",
            Self::WebhookTaskMissing => "webhook_task_missing",
            Self::Provider(code) => code,
        }
    }
}

impl fmt::Display for JobCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
