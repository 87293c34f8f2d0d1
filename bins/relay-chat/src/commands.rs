//! The terminal's commands: `/peers`, `/open NAME`, `/fp`, … and lines to send.

use std::sync::{Arc, Mutex};

use relay_client::{Client, ClientError, KeyStatus, RecoveryCode};

use crate::{hold, outbox_id, protection, recovery_text, say, show};

/// What the loop does after a line.
pub(crate) enum Next {
    /// Read the next line.
    Continue,
    /// `/quit`.
    Quit,
}

/// The terminal's state between lines.
pub(crate) struct Terminal {
    pub(crate) client: Arc<Client>,
    /// The recovery code this process registered, until `/recovery done`.
    pub(crate) recovery: Arc<Mutex<Option<RecoveryCode>>>,
    /// The conversation lines are sent to.
    pub(crate) open: Option<String>,
}

impl Terminal {
    /// Runs one line: a command, or a message to the open conversation.
    ///
    /// # Errors
    /// What the command's client call returned, or an unknown command.
    pub(crate) async fn line(&mut self, line: &str) -> Result<Next, ClientError> {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("/quit"), _) => Ok(Next::Quit),
            (Some("/help"), _) => {
                say(
                    "/peers (contacts)  /search PREFIX  /open NAME  /fp [NAME]  /verify NAME  /accept NAME  /outbox  /retry ID  /abandon ID  /recovery [done]  /quit; other lines are sent",
                );
                Ok(Next::Continue)
            }
            (Some("/recovery"), done) => {
                self.recovery_command(done == Some("done"));
                Ok(Next::Continue)
            }
            (Some("/peers"), _) => self.peers().await.map(|()| Next::Continue),
            (Some("/search"), prefix) => self.search(prefix.unwrap_or("")).await.map(|()| Next::Continue),
            (Some("/open"), Some(name)) => {
                self.open = Some(name.to_owned());
                say(&format!("conversation with {name}"));
                Ok(Next::Continue)
            }
            (Some("/fp"), name) => self.fingerprint(name).await.map(|()| Next::Continue),
            (Some(cmd), arg) if cmd.starts_with('/') => {
                self.outbox_or_keys(cmd, arg).await.map(|()| Next::Continue)
            }
            _ => match &self.open {
                Some(peer) => {
                    let r = self.client.send(peer, line.as_bytes()).await?;
                    say(&show(&r));
                    Ok(Next::Continue)
                }
                None => Err(ClientError::Invalid(
                    "open a conversation first: /open NAME".into(),
                )),
            },
        }
    }

    fn recovery_command(&self, done: bool) {
        if done {
            hold(&self.recovery, None);
            say("the recovery code is forgotten here; /recovery can no longer show it");
            return;
        }
        let held = self
            .recovery
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for l in recovery_text(held.as_ref()).lines() {
            say(l);
        }
    }

    async fn peers(&self) -> Result<(), ClientError> {
        let peers = self.client.contacts().await?;
        if peers.is_empty() {
            say("no contacts yet: /search PREFIX finds people, /open NAME talks to one");
        }
        for p in peers {
            let status = match p.key_status {
                KeyStatus::NoKey => "no key",
                KeyStatus::New => "new",
                KeyStatus::Known => "known",
                KeyStatus::Changed => "KEY CHANGED",
            };
            let fp = p.identity_key.map(|k| k.short_fingerprint()).unwrap_or_default();
            say(&format!(
                "peer {} key={} {} v{} last_seen={}",
                p.client_id, fp, status, p.key_version, p.last_seen
            ));
        }
        Ok(())
    }

    async fn search(&self, prefix: &str) -> Result<(), ClientError> {
        let (found, next) = self.client.search(prefix, None).await?;
        for p in &found {
            let fp = p.identity_key.map(|k| k.short_fingerprint()).unwrap_or_default();
            say(&format!(
                "found {} key={fp} last_seen={}",
                p.client_id, p.last_seen
            ));
        }
        if found.is_empty() {
            say("nobody found");
        }
        if next.is_some() {
            say("more match: type more of the name");
        }
        Ok(())
    }

    async fn fingerprint(&self, name: Option<&str>) -> Result<(), ClientError> {
        let peer = name
            .map(str::to_owned)
            .or_else(|| self.open.clone())
            .ok_or_else(|| ClientError::Invalid("no conversation open".into()))?;
        let fp = self.client.fingerprint(&peer).await?;
        say(&format!("fingerprint with {peer} (compare it with theirs):"));
        for l in fp.to_string().lines() {
            say(&format!("  {l}"));
        }
        let c = self.client.conversation(&peer).await?;
        say(&protection(&peer, c.as_ref()));
        Ok(())
    }

    /// `/outbox`, `/retry ID`, `/abandon ID`, `/verify NAME`, `/accept NAME`.
    async fn outbox_or_keys(&self, cmd: &str, arg: Option<&str>) -> Result<(), ClientError> {
        let client = &self.client;
        match (cmd, arg) {
            ("/outbox", _) => {
                let waiting = client.outbox().await;
                if waiting.is_empty() {
                    say("outbox empty: every message was stored");
                }
                for r in waiting {
                    say(&show(&r));
                }
            }
            ("/retry", id) => say(&show(&client.retry(outbox_id(id)?).await?)),
            ("/abandon", id) => {
                let r = client.abandon(outbox_id(id)?).await?;
                say(&format!("abandoned message #{} to {}", r.id, r.to));
            }
            ("/verify", Some(name)) => {
                client.mark_verified(name).await?;
                say(&format!("{name} marked verified"));
            }
            ("/accept", Some(name)) => {
                client.accept_peer_key(name).await?;
                say(&format!("accepted {name}'s new key"));
            }
            _ => return Err(ClientError::Invalid(format!("unknown command {cmd}"))),
        }
        Ok(())
    }
}
