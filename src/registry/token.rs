//! Bearer tokens from the realm a registry names (the distribution token protocol): a GET with
//! Basic credentials (or none, for anonymous pulls), or, with an identity token, the OAuth2
//! `refresh_token` POST Docker uses.

use reqwest::header::{AUTHORIZATION, LOCATION};
use reqwest::{StatusCode, Url};

use super::auth::{Credentials, Secret};
use super::transport::{classify, explain, registry_error, Failure};
use super::Reference;
use crate::error::{escape, Error};

pub(crate) struct TokenRequest<'a> {
    pub http: &'a reqwest::blocking::Client,
    /// The registry asking (for messages and error classification).
    pub reference: &'a Reference,
    /// The realm the registry named, already checked against the connection's `Transport`.
    pub realm: &'a Url,
    pub service: Option<&'a str>,
    pub scopes: &'a [String],
    pub credentials: Option<&'a Credentials>,
    /// The whole-request deadline of the answer's body.
    pub deadline: std::time::Duration,
}

/// Why the token server refused: the credentials, when it says so.
pub(crate) enum Refusal {
    Unauthorized,
    Other(Error),
}

impl TokenRequest<'_> {
    /// The `Authorization` value the token server grants.
    pub(super) fn fetch(&self) -> std::result::Result<Secret, Refusal> {
        let request = match self.credentials.and_then(Credentials::as_identity_token) {
            Some(token) => self.refresh_token_request(token),
            None => self.get_request(),
        };
        let realm = escape(self.realm.as_str());
        let response = request.send().map_err(|e| {
            Refusal::Other(match classify(self.reference, &e) {
                Failure::Fatal(e) => e,
                Failure::Transient(why) => self.error(format!("token request to {realm}: {why}")),
            })
        })?;
        if response.status().is_redirection() {
            // Followed, it would take the password or identity token to a place the registry
            // did not name (a 307 re-sends a POST's body).
            let to = response.headers().get(LOCATION).and_then(|l| l.to_str().ok()).unwrap_or("");
            return Err(Refusal::Other(self.error(format!(
                "token request to {realm}: redirected to {}; imgbuild sends credentials only to the \
                 token realm the registry named, and follows no redirect from it",
                escape(to)
            ))));
        }
        if matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(Refusal::Unauthorized);
        }
        if !response.status().is_success() {
            return Err(Refusal::Other(self.error(format!("token request to {realm}: {}", explain(response)))));
        }
        let text = crate::net::read_small(response, crate::net::MAX_TOKEN_ANSWER, self.deadline)
            .map_err(|e| Refusal::Other(self.error(format!("token request to {realm}: {e}"))))?;
        let body: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|_| Refusal::Other(self.error(format!("token request to {realm}: the answer is not JSON"))))?;
        let token = body.get("token").or_else(|| body.get("access_token")).and_then(|t| t.as_str());
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Refusal::Other(self.error(format!("token request to {realm}: no token in the answer"))))?;
        Ok(Secret::new(format!("Bearer {token}")))
    }

    fn error(&self, message: String) -> Error {
        registry_error(&self.reference.registry, message)
    }

    fn get_request(&self) -> reqwest::blocking::RequestBuilder {
        let mut query: Vec<(&str, &str)> = Vec::new();
        query.extend(self.service.map(|s| ("service", s)));
        query.extend(self.scopes.iter().map(|s| ("scope", s.as_str())));
        let request = self.http.get(self.realm.clone()).query(&query);
        match self.credentials {
            Some(c) => request.header(AUTHORIZATION, c.basic_header().expose()),
            None => request,
        }
    }

    fn refresh_token_request(&self, token: &Secret) -> reqwest::blocking::RequestBuilder {
        let scope = self.scopes.join(" ");
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", token.expose()),
            ("client_id", "imgbuild"),
            ("scope", scope.as_str()),
        ];
        form.extend(self.service.map(|s| ("service", s)));
        self.http.post(self.realm.clone()).form(&form)
    }
}
