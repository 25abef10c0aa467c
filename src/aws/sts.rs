//! STS as IAM callers use it: the endpoint their signed `GetCallerIdentity` is sent to,
//! and STS's XML answers, read with the SDK's own decoder. This service sends the
//! caller's signed request itself, so no STS client (and no credential of its own) is
//! involved.

/// The STS endpoint for `region`, as the SDK's resolver names it (`sts.<region>.amazonaws.com`,
/// `.amazonaws.com.cn` in China), or the endpoint given.
pub(crate) fn endpoint(endpoint_url: Option<&str>, region: &str) -> Result<url::Url, String> {
    let text = match endpoint_url {
        Some(url) => url.to_string(),
        None if region.starts_with("cn-") => format!("https://sts.{region}.amazonaws.com.cn/"),
        None => format!("https://sts.{region}.amazonaws.com/"),
    };
    url::Url::parse(&text).map_err(|e| format!("the STS endpoint {text:?} is not a URL: {e}"))
}

/// The `Arn` of STS's `GetCallerIdentityResponse/GetCallerIdentityResult`, read with
/// the AWS SDK's own XML decoder.
pub(crate) fn caller_arn(xml: &str) -> Option<String> {
    use aws_smithy_xml::decode::{Document, try_data};
    let mut doc = Document::new(xml);
    let mut root = doc.root_element().ok()?;
    if !root.start_el().matches("GetCallerIdentityResponse") {
        return None;
    }
    while let Some(mut result) = root.next_tag() {
        if !result.start_el().matches("GetCallerIdentityResult") {
            continue;
        }
        while let Some(mut field) = result.next_tag() {
            if field.start_el().matches("Arn") {
                let arn = try_data(&mut field).ok()?.to_string();
                return arn.starts_with("arn:").then_some(arn);
            }
        }
    }
    None
}

/// The `Code` of STS's `ErrorResponse/Error`.
pub(crate) fn error_code(xml: &str) -> Option<String> {
    use aws_smithy_xml::decode::{Document, try_data};
    let mut doc = Document::new(xml);
    let mut root = doc.root_element().ok()?;
    while let Some(mut error) = root.next_tag() {
        if !error.start_el().matches("Error") {
            continue;
        }
        while let Some(mut field) = error.next_tag() {
            if field.start_el().matches("Code") {
                return try_data(&mut field).ok().map(|c| c.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_answers_are_read_for_their_arn_and_code() {
        // As the STS API reference prints them (GetCallerIdentity, Errors).
        let ok = r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>arn:aws:iam::123456789012:user/Alice</Arn>
    <UserId>AKIAI44QH8DHBEXAMPLE</UserId>
    <Account>123456789012</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata>
    <RequestId>01234567-89ab-cdef-0123-456789abcdef</RequestId>
  </ResponseMetadata>
</GetCallerIdentityResponse>"#;
        assert_eq!(
            caller_arn(ok).as_deref(),
            Some("arn:aws:iam::123456789012:user/Alice")
        );
        let elsewhere = "<GetCallerIdentityResponse><Other><Arn>arn:aws:iam::1:user/x</Arn></Other></GetCallerIdentityResponse>";
        assert_eq!(caller_arn(elsewhere), None);
        let err = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error><RequestId>x</RequestId></ErrorResponse>"#;
        assert_eq!(error_code(err).as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(
            endpoint(None, "eu-west-1").expect("url").as_str(),
            "https://sts.eu-west-1.amazonaws.com/"
        );
        assert_eq!(
            endpoint(None, "cn-north-1").expect("url").as_str(),
            "https://sts.cn-north-1.amazonaws.com.cn/"
        );
    }
}
