//! ID-token verification: the signature against the provider's JWKS (refetched once for
//! an unknown `kid`, as after a key rotation), `iss`, `aud`, `exp` and `nonce`, and what is
//! wrong with a token that fails, as a stable code.

use openidconnect::core::{
    CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
};
use openidconnect::{AdditionalClaims, IdToken, Nonce};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{OidcProvider, ProviderError};
use crate::series::Label;
use crate::store::UserInfo;

/// Claims beyond the standard ones that we read from ID tokens.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct ExtraClaims {
    /// Google Workspace hosted domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) hd: Option<String>,
    /// Microsoft Entra's tenant of the account (fills the issuer template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tid: Option<String>,
}
impl AdditionalClaims for ExtraClaims {}

type ProviderIdToken = IdToken<
    ExtraClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// What is wrong with an ID token, as a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum IdTokenProblem {
    Missing,
    BadSignature,
    WrongIssuer,
    WrongAudience,
    WrongNonce,
    Expired,
    Malformed,
}

impl std::fmt::Display for IdTokenProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl OidcProvider {
    /// Verifies a flow's ID token (signature against the JWKS, `iss`, `aud`, `exp`, and
    /// the flow's `nonce`) and returns the profile it carries.
    #[tracing::instrument(skip_all, fields(provider = %self.config.name))]
    pub(crate) async fn verify_id_token(
        &self,
        id_token: &SecretString,
        nonce: &str,
        client: Option<&str>,
    ) -> Result<UserInfo, ProviderError> {
        self.verify_id_token_with(id_token, Some(nonce), client)
            .await
    }

    /// Verifies an ID token the token endpoint answered a refresh with, which carries
    /// no nonce (OpenID Connect Core 12.2): signature, `iss`, `aud` and `exp` as any.
    /// Only for a token read from the provider's own answer, never one a caller gives.
    pub(crate) async fn verify_refreshed_id_token(
        &self,
        id_token: &SecretString,
        client: Option<&str>,
    ) -> Result<UserInfo, ProviderError> {
        self.verify_id_token_with(id_token, None, client).await
    }

    async fn verify_id_token_with(
        &self,
        id_token: &SecretString,
        nonce: Option<&str>,
        client: Option<&str>,
    ) -> Result<UserInfo, ProviderError> {
        let token: ProviderIdToken = id_token
            .expose_secret()
            .parse()
            .map_err(|_| ProviderError::IdToken(IdTokenProblem::Malformed))?;
        let creds = self.credentials_for(client).await?;
        let mut d = self.discovered().await?;
        // An ID token a refresh answered with carries no nonce (OpenID Connect Core
        // 12.2): `None` checks none; a flow's token must carry the flow's.
        let nonce = nonce.map(|n| Nonce::new(n.to_string()));
        let mut refetched = false;
        loop {
            let client = self.client(&d, &creds, None)?;
            let tenant_issuer = self.config.profile.tenant_issuer;
            // A tenant template is checked below, against the token's own tenant.
            let verifier = client
                .id_token_verifier()
                .require_issuer_match(!tenant_issuer);
            let claims = match &nonce {
                Some(nonce) => token.claims(&verifier, nonce),
                None => token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
            };
            match claims {
                Ok(claims) => {
                    if tenant_issuer
                        && !issued_by_tenant(
                            d.metadata.issuer().as_str(),
                            claims.issuer().as_str(),
                            claims.additional_claims().tid.as_deref(),
                        )
                    {
                        return Err(ProviderError::IdToken(IdTokenProblem::WrongIssuer));
                    }
                    return Ok(UserInfo {
                        sub: claims.subject().to_string(),
                        email: claims.email().map(|e| e.to_string()),
                        email_verified: claims.email_verified(),
                        name: claims
                            .name()
                            .and_then(|n| n.get(None))
                            .map(|n| n.to_string()),
                        picture: claims
                            .picture()
                            .and_then(|p| p.get(None))
                            .map(|p| p.to_string()),
                        hd: claims.additional_claims().hd.clone(),
                    });
                }
                Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                    openidconnect::SignatureVerificationError::NoMatchingKey,
                )) if !refetched => {
                    refetched = true;
                    match self.metadata.refetch_jwks(&d).await? {
                        Some(fresh) => d = fresh,
                        None => return Err(ProviderError::IdToken(IdTokenProblem::BadSignature)),
                    }
                }
                Err(e) => return Err(ProviderError::IdToken(classify_claims_error(&e))),
            }
        }
    }
}

/// Whether an ID token's `iss` is the discovered issuer, or, where that is a template
/// with `{tenantid}`, the template filled with the token's own `tid` (a GUID).
fn issued_by_tenant(discovered: &str, iss: &str, tid: Option<&str>) -> bool {
    if !discovered.contains("{tenantid}") {
        return iss == discovered;
    }
    tid.is_some_and(|tid| {
        super::metadata::is_tenant_id(tid) && iss == discovered.replace("{tenantid}", tid)
    })
}

fn classify_claims_error(e: &openidconnect::ClaimsVerificationError) -> IdTokenProblem {
    use openidconnect::ClaimsVerificationError as E;
    match e {
        E::Expired(_) => IdTokenProblem::Expired,
        E::InvalidAudience(_) => IdTokenProblem::WrongAudience,
        E::InvalidIssuer(_) => IdTokenProblem::WrongIssuer,
        E::InvalidNonce(_) => IdTokenProblem::WrongNonce,
        E::SignatureVerification(_) => IdTokenProblem::BadSignature,
        _ => IdTokenProblem::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::issued_by_tenant;

    #[test]
    fn a_template_issuer_is_filled_with_the_tokens_own_tenant() {
        let template = "https://login.microsoftonline.com/{tenantid}/v2.0";
        let tid = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let iss = format!("https://login.microsoftonline.com/{tid}/v2.0");
        assert!(issued_by_tenant(template, &iss, Some(tid)));
        let other = "0e4a2c1b-1111-2222-3333-444455556666";
        assert!(
            !issued_by_tenant(template, &iss, Some(other)),
            "tid and iss disagree"
        );
        assert!(!issued_by_tenant(template, &iss, None), "no tid");
        assert!(!issued_by_tenant(
            template,
            "https://login.microsoftonline.com/{tenantid}/v2.0",
            Some("{tenantid}")
        ));
        assert!(
            issued_by_tenant(&iss, &iss, None),
            "a fixed issuer is compared as is"
        );
        assert!(!issued_by_tenant(
            &iss,
            "https://evil.example.com",
            Some(tid)
        ));
    }
}
