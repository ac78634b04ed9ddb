//! Long polling: Telegram bots in `mode: "polling"` fetch their updates with `getUpdates`, for
//! local use without a public URL.
//!
//! One task per polling channel. Each batch goes through the same parser and the same ingest as
//! a webhook, and the offset (Telegram's acknowledgement) moves past an update only after it is
//! stored: a crash re-fetches what was not stored, and dedupe on `update_id` absorbs repeats.
//! Telegram refuses `getUpdates` while a webhook is set, so the task removes it first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_channel::SendError;
use switchboard_channel_telegram::{BotIdentity, Mode, TelegramConfig, parse_update};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::ingest::Ingest;
use crate::outbox::Channels;
use crate::store::Store;
use crate::store::channels::Channel;

/// Long-poll timeout asked of Telegram.
const POLL_TIMEOUT: Duration = Duration::from_secs(25);

/// The running pollers, by channel id. Cheap to clone.
#[derive(Clone, Default)]
pub struct Pollers {
    running: Arc<Mutex<HashMap<String, CancellationToken>>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Pollers {
    /// Starts polling a channel if its config says `polling` (restarting it with the new config
    /// if it was already running); stops it otherwise.
    pub fn ensure(&self, ingest: &Ingest, channels: &Channels, channel: &Channel) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = running.remove(&channel.id) {
            old.cancel();
        }
        if channel.kind != switchboard_channel::ChannelKind::Telegram {
            return;
        }
        let Ok(config) = TelegramConfig::parse(&channel.config) else {
            return;
        };
        if config.mode != Mode::Polling || self.shutdown.is_cancelled() {
            return;
        }
        let cancel = self.shutdown.child_token();
        running.insert(channel.id.clone(), cancel.clone());
        let task = Poller {
            ingest: ingest.clone(),
            channels: channels.clone(),
            channel: channel.clone(),
            config,
            cancel,
        };
        let span = info_span!("telegram_polling", channel = %channel.id);
        self.tracker.spawn(task.run().instrument(span));
    }

    /// At start-up, for every Telegram channel: start its poller (polling mode), or register
    /// its webhook again when `public_url` is set (it may have changed since the channel was
    /// connected); and learn the bot's @username if connecting could not. Returns how many
    /// pollers were started. Provider calls run in the background and only log failures.
    pub async fn start_all(
        &self,
        store: &Store,
        ingest: &Ingest,
        channels: &Channels,
        public_url: Option<&str>,
    ) -> anyhow::Result<usize> {
        let mut started = 0;
        for channel in store
            .channels_of_kind(switchboard_channel::ChannelKind::Telegram)
            .await?
        {
            let Ok(config) = TelegramConfig::parse(&channel.config) else {
                warn!(channel = %channel.id, "unreadable Telegram channel config; skipped");
                continue;
            };
            if config.mode == Mode::Polling {
                self.ensure(ingest, channels, &channel);
                started += 1;
            }
            if config.bot_username.is_none() {
                self.learn_username(store, channels, &channel);
            }
            let (channels, public_url) = (channels.clone(), public_url.map(str::to_owned));
            self.tracker.spawn(async move {
                let telegram = channels.telegram();
                if config.mode == Mode::Webhook
                    && let Some(base) = public_url
                {
                    let url = format!(
                        "{}/webhooks/telegram/{}",
                        base.trim_end_matches('/'),
                        channel.id
                    );
                    match telegram.set_webhook(&config, &url).await {
                        Ok(()) => info!(channel = %channel.id, "Telegram webhook registered"),
                        Err(e) => warn!(channel = %channel.id, error = %e, "setWebhook failed"),
                    }
                }
            });
        }
        Ok(started)
    }

    /// Stops a channel's poller, if it has one (the channel was removed).
    pub fn stop(&self, channel_id: &str) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = running.remove(channel_id) {
            old.cancel();
        }
    }

    /// Asks Telegram for the bot's @username (`getMe`) until it answers, with back-off (2 s
    /// doubling to 10 min), and saves it in the channel's configuration — unless the channel
    /// was removed or reconfigured meanwhile. Without it, group messages that address the bot
    /// by @username are not recognised.
    pub fn learn_username(&self, store: &Store, channels: &Channels, channel: &Channel) {
        let (store, channels, channel) = (store.clone(), channels.clone(), channel.clone());
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            let mut pause = Duration::from_secs(2);
            loop {
                // The channel as it is now: gone, or changed by someone else → stop.
                let current = match store.channel(&channel.tenant_id, &channel.id).await {
                    Ok(Some(c)) => c,
                    Ok(None) => return,
                    Err(e) => {
                        warn!(channel = %channel.id, error = %e, "loading the channel failed");
                        channel.clone()
                    }
                };
                let Ok(config) = TelegramConfig::parse(&current.config) else {
                    return;
                };
                if config.bot_username.is_some() {
                    return;
                }
                match channels.telegram().username(&config).await {
                    Ok(Some(name)) => {
                        let mut updated = config.clone();
                        updated.bot_username = Some(name);
                        let saved = match serde_json::to_value(&updated) {
                            Ok(value) => store
                                .upsert_channel(
                                    &current.tenant_id,
                                    current.kind,
                                    &value,
                                    Some(&current.id),
                                )
                                .await
                                .map(|_| ())
                                .map_err(anyhow::Error::from),
                            Err(e) => Err(e.into()),
                        };
                        match saved {
                            Ok(()) => info!(channel = %channel.id, "learnt the bot's @username"),
                            Err(e) => {
                                warn!(channel = %channel.id, error = %e, "saving the bot's username failed")
                            }
                        }
                        return;
                    }
                    // A bot without a username cannot be addressed by one: nothing to learn.
                    Ok(None) => return,
                    Err(e) => {
                        warn!(channel = %channel.id, error = %e, ?pause, "getMe failed; trying again");
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(600));
            }
        });
    }

    /// Stops every poller and waits for them (a batch being stored is finished first).
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

struct Poller {
    ingest: Ingest,
    channels: Channels,
    channel: Channel,
    config: TelegramConfig,
    cancel: CancellationToken,
}

impl Poller {
    async fn run(self) {
        let telegram = self.channels.telegram();
        let mut pause = Duration::from_secs(1);
        // No webhook may be set while polling.
        loop {
            match telegram.delete_webhook(&self.config).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, ?pause, "deleteWebhook failed; retrying");
                    if self.sleep(pause).await {
                        return;
                    }
                    pause = (pause * 2).min(Duration::from_secs(60));
                }
            }
        }
        info!("polling Telegram for updates");
        let bot = BotIdentity {
            id: self.config.bot_id(),
            username: self.config.bot_username.as_deref(),
        };
        let mut offset: Option<i64> = None;
        pause = Duration::from_secs(1);
        loop {
            let fetched = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = telegram.get_updates(&self.config, offset, POLL_TIMEOUT) => r,
            };
            let wait = match fetched {
                Ok(updates) => {
                    pause = Duration::from_secs(1);
                    match self.store_batch(&updates, bot, &mut offset).await {
                        Ok(()) => continue,
                        Err(e) => {
                            warn!(error = %e, "storing polled updates failed; fetching them again");
                            Duration::from_secs(1)
                        }
                    }
                }
                Err(SendError::RetryAfter(wait, _)) => wait,
                Err(e) => {
                    // A revoked token or a webhook set elsewhere (409) will not fix itself
                    // quickly; network trouble may. Back off either way, loudly.
                    warn!(error = %e, ?pause, "getUpdates failed");
                    let wait = pause;
                    pause = (pause * 2).min(Duration::from_secs(60));
                    wait
                }
            };
            if self.sleep(wait).await {
                return;
            }
        }
    }

    /// Stores a batch in order; the offset moves past each update once it is stored.
    async fn store_batch(
        &self,
        updates: &[serde_json::Value],
        bot: BotIdentity<'_>,
        offset: &mut Option<i64>,
    ) -> Result<(), sqlx::Error> {
        for update in updates {
            let Some(id) = update.get("update_id").and_then(serde_json::Value::as_i64) else {
                warn!("an update without update_id; skipped");
                continue;
            };
            match parse_update(update, bot) {
                Ok(events) => {
                    self.ingest.apply(&self.channel, events).await?;
                }
                Err(e) => warn!(error = %e, update_id = id, "unreadable update; skipped"),
            }
            *offset = Some(id + 1);
        }
        Ok(())
    }

    /// Sleeps unless cancelled; `true` if cancelled.
    async fn sleep(&self, wait: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => true,
            _ = tokio::time::sleep(wait) => false,
        }
    }
}
