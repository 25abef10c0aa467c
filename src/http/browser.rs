//! Errors on the browser routes: a short HTML page, or a redirect to the flow's
//! (already allow-listed) return URL with `status=error&error=<code>`. The status and
//! code come from [`Error`], as on the API.

use std::sync::Arc;

use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};

use crate::connect::ConnectError;
use crate::error::Error;
use crate::oauth::ReturnUrl;

/// An error on a browser endpoint.
pub(crate) struct BrowserError {
    pub(crate) error: Error,
    /// The flow's return URL, once `state` proved it ours and allow-listed.
    pub(crate) return_to: Option<ReturnUrl>,
    /// The flow's id, carried on the error redirect so the application can match it.
    pub(crate) flow_id: Option<crate::ids::FlowId>,
}

impl From<crate::tokens::TokenError> for BrowserError {
    fn from(error: crate::tokens::TokenError) -> Self {
        Error::from(error).into()
    }
}

impl From<crate::connect::ConnectError> for BrowserError {
    fn from(error: crate::connect::ConnectError) -> Self {
        Error::from(error).into()
    }
}

impl From<Error> for BrowserError {
    fn from(error: Error) -> Self {
        Self {
            error,
            return_to: None,
            flow_id: None,
        }
    }
}

impl IntoResponse for BrowserError {
    fn into_response(self) -> Response {
        let report = Arc::new(self.error.report());
        let mut response = match &self.return_to {
            Some(return_to) => {
                let mut pairs = vec![("status", "error"), ("error", self.error.code())];
                if let Some(flow_id) = &self.flow_id {
                    pairs.push(("flowId", flow_id.as_str()));
                }
                let missing = match &self.error {
                    Error::Connect(ConnectError::ScopesNotGranted { missing }) => {
                        Some(missing.join(" "))
                    }
                    _ => None,
                };
                if let Some(missing) = &missing {
                    pairs.push(("missingScopes", missing));
                }
                let url = return_to.with_query(&pairs);
                super::found(url.as_str())
            }
            None => {
                let status = self.error.status();
                let page = format!(
                    "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
                     <body><h1>{title}</h1><p>{detail}</p><p>Error code: <code>{code}</code></p>\
                     <p>Go back to the application and try connecting again.</p></body></html>",
                    title = html_escape(self.error.title()),
                    detail = html_escape(&self.error.public_detail()),
                    code = self.error.code(),
                );
                let mut page = (status, Html(page)).into_response();
                if let Some(secs) = self.error.retry_after_secs() {
                    page.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                page
            }
        };
        response.extensions_mut().insert(report);
        response
    }
}

pub(crate) fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            html_escape("<script>&'\""),
            "&lt;script&gt;&amp;&#39;&quot;"
        );
    }
}
