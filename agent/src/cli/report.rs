//! How `status` and `check` report: the output format ([`Output`]), the
//! exit codes, one line of `check`'s report ([`Step`]), and an error with
//! its causes for the messages ([`error_chain`]).

use serde::Serialize;

/// Exit codes of `status` and `check`.
pub const EXIT_OK: i32 = 0;
pub const EXIT_NOT_READY: i32 = 1;
pub const EXIT_UNREACHABLE: i32 = 2;

/// How `status` and `check` print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// The result of one `check` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub step: String,
    pub result: Outcome,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Step {
    pub fn pass(step: &str, detail: String) -> Step {
        Step { step: step.into(), result: Outcome::Pass, detail, reason: None, hint: None }
    }
    pub fn skip(step: &str, detail: String) -> Step {
        Step { step: step.into(), result: Outcome::Skip, detail, reason: None, hint: None }
    }
    pub fn fail(step: &str, reason: &str, detail: String, hint: String) -> Step {
        Step { step: step.into(), result: Outcome::Fail, detail, reason: Some(reason.into()), hint: Some(hint) }
    }
}

/// An error and its causes, `: `-joined (reqwest hides the cause of a
/// connect or TLS failure one level down).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut why = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        why.push_str(": ");
        why.push_str(&s.to_string());
        src = s.source();
    }
    why
}
