//! Getting a one-time code to a person: a backup email through the operator's SMTP relay
//! (`[portal.mail]`), a phone through their SMS gateway (`[portal.sms]`: a program or a
//! webhook, given JSON). The code is in the message body only: never in argv, a URL or a log.

use std::process::Stdio;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;

use crate::config::{Config, PortalMailConfig, PortalSmsConfig};
use crate::credentials::accounts::{Channel, CodeToSend};
use crate::upstream::Backend;

/// The configured ways out.
pub struct Delivery {
    mail: Option<(Backend, PortalMailConfig)>,
    sms: Option<PortalSmsConfig>,
    hostname: String,
    issuer: String,
}

/// What a code is for, as the message says it.
#[derive(Debug, Clone, Copy)]
pub enum Why {
    Confirm,
    Restore,
}

impl Delivery {
    pub fn new(config: &Config) -> Result<Self, String> {
        let mail = match &config.portal.mail {
            Some(mail) => Some((
                Backend::new("portal.mail", &mail.relay_backend())?,
                mail.clone(),
            )),
            None => None,
        };
        let hostname = config
            .hostname
            .clone()
            .unwrap_or_else(|| "localhost".into());
        Ok(Self {
            mail,
            sms: config.portal.sms.clone(),
            issuer: config
                .portal
                .issuer
                .clone()
                .unwrap_or_else(|| hostname.clone()),
            hostname,
        })
    }

    /// Whether codes can go out by `channel` at all.
    pub fn can_send(&self, channel: Channel) -> bool {
        match channel {
            Channel::Email => self.mail.is_some(),
            Channel::Phone => self.sms.is_some(),
        }
    }

    /// Sends the code; an error is for the log (the page says only that it did not work).
    pub async fn send(&self, code: &CodeToSend, why: Why) -> Result<(), String> {
        let digits = String::from_utf8_lossy(code.code.expose()).into_owned();
        let text = match why {
            Why::Confirm => format!(
                "{digits} is your {} code to confirm this {}. It is valid for 10 minutes.",
                self.issuer,
                match code.channel {
                    Channel::Email => "address",
                    Channel::Phone => "number",
                }
            ),
            Why::Restore => format!(
                "{digits} is your {} code to restore access to your account. It is valid for 10 minutes. If you did not ask for it, ignore this message: your account is unchanged.",
                self.issuer
            ),
        };
        match code.channel {
            Channel::Email => self.mail(&code.target, &text).await,
            Channel::Phone => self.sms(&code.target, &text).await,
        }
    }

    async fn mail(&self, to: &str, text: &str) -> Result<(), String> {
        let Some((relay, config)) = &self.mail else {
            return Err("no [portal.mail] is configured".into());
        };
        let date = crate::clock::rfc5322(crate::credentials::model::now_ms());
        let id = crate::credentials::hashing::hex(&rand::random::<[u8; 12]>());
        let message = format!(
            "From: {issuer} <{from}>\r\nTo: <{to}>\r\nSubject: Your {issuer} code\r\nDate: {date}\r\nMessage-ID: <{id}@{host}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nAuto-Submitted: auto-generated\r\n\r\n{text}\r\n",
            issuer = self.issuer,
            from = config.from,
            host = self.hostname,
        );
        crate::upstream::smtp::send(relay, &self.hostname, &config.from, to, &message)
            .await
            .map_err(|e| e.to_string())
    }

    async fn sms(&self, to: &str, text: &str) -> Result<(), String> {
        let Some(config) = &self.sms else {
            return Err("no [portal.sms] is configured".into());
        };
        let body = serde_json::json!({ "to": to, "text": text }).to_string();
        let timeout = Duration::from_secs(config.timeout_secs);
        let work = async {
            if let Some(command) = &config.command {
                run_command(command, &body).await
            } else if let Some(url) = &config.webhook {
                post(url, body).await
            } else {
                Err("[portal.sms] has neither command nor webhook".into())
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| "the SMS gateway did not answer in time".to_owned())?
    }
}

async fn run_command(command: &[String], body: &str) -> Result<(), String> {
    let Some((program, args)) = command.split_first() else {
        return Err("[portal.sms] command is empty".into());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(body.as_bytes())
            .await
            .map_err(|e| format!("{program}: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        // Its stderr is not logged: a program that echoes its input would put the code there.
        Err(format!("{program} failed ({})", output.status))
    }
}

async fn post(url: &str, body: String) -> Result<(), String> {
    let tls = crate::tls::backend_client_config(None).map_err(|e| e.to_string())?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector);
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    // Read (a bounded part of) the answer so the connection ends cleanly.
    let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
        .collect()
        .await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the SMS webhook answered {status}"))
    }
}
