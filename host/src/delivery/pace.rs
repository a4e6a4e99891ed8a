//! Outbound pacing: per-chat and per-installation token buckets, shared by every plugin call
//! that sends (replies, notices, stream ends, typing changes), at the rates the plugin's
//! manifest declares (`[pacing]`). Channel-neutral: the host only knows rates and keys.
//!
//! Each bucket holds one token and refills at the declared rate, kept as the instant its next
//! token is due (GCRA with no burst tolerance): a call reserves the earliest instant both its
//! buckets allow, moves both on by one interval, and sleeps until that instant outside the
//! lock. Reservations are made in call order, so a burst is spread evenly, and no window of
//! one second ever holds more sends than the rate (a bucket of one second's worth would allow
//! twice the rate in a window straddling the refill, which trips a channel's per-second limit).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::runtime::manifest::Pacing;

/// Above this many remembered buckets, idle ones (whose time is past) are dropped.
const PRUNE_ABOVE: usize = 4_096;

/// One bucket: the instant its next token is due.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// The earliest instant of the next send (the GCRA "theoretical arrival time").
    tat: Instant,
}

/// The token buckets of every installation and chat this host sends to. Cheap to share.
#[derive(Debug, Default)]
pub struct Pacer {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

impl Pacer {
    /// A pacer with no history.
    pub fn new() -> Pacer {
        Pacer::default()
    }

    /// Waits until one send to `chat` of `installation` fits `pacing`, and takes the token.
    pub async fn wait(&self, pacing: Pacing, installation: &str, chat: &str) {
        if let Some(at) = self.reserve(pacing, installation, chat, Instant::now()) {
            tokio::time::sleep_until(at).await;
        }
    }

    /// Reserves the earliest instant at or after `now` both buckets allow; `None` when that
    /// is `now` (no wait).
    fn reserve(
        &self,
        pacing: Pacing,
        installation: &str,
        chat: &str,
        now: Instant,
    ) -> Option<Instant> {
        let limits = [
            pacing
                .per_installation_per_s
                .map(|rate| ((installation.to_string(), String::new()), rate)),
            pacing
                .per_chat_per_s
                .map(|rate| ((installation.to_string(), format!("chat:{chat}")), rate)),
        ];
        let limits: Vec<_> = limits.into_iter().flatten().collect();
        if limits.is_empty() {
            return None;
        }
        let mut buckets = self.buckets.lock().expect("pacer buckets");
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, bucket| bucket.tat > now);
        }
        // The earliest instant every bucket has its token.
        let at = limits
            .iter()
            .filter_map(|(key, _)| buckets.get(key).map(|bucket| bucket.tat))
            .fold(now, Instant::max);
        for (key, rate) in limits {
            let interval = Duration::from_secs_f64(1.0 / rate);
            let bucket = buckets.entry(key).or_insert(Bucket { tat: at });
            bucket.tat = bucket.tat.max(at) + interval;
        }
        (at > now).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacing(chat: f64, installation: f64) -> Pacing {
        Pacing {
            per_chat_per_s: (chat > 0.0).then_some(chat),
            per_installation_per_s: (installation > 0.0).then_some(installation),
        }
    }

    /// The offsets from `now` of `count` reservations made at `now`.
    fn offsets(pacer: &Pacer, pacing: Pacing, chat: &str, now: Instant, count: usize) -> Vec<u128> {
        (0..count)
            .map(|_| {
                pacer
                    .reserve(pacing, "inst", chat, now)
                    .map_or(0, |at| (at - now).as_millis())
            })
            .collect()
    }

    #[test]
    fn a_burst_to_one_chat_is_spread_at_the_chat_rate() {
        let pacer = Pacer::new();
        let now = Instant::now();
        let got = offsets(&pacer, pacing(5.0, 50.0), "c1", now, 7);
        // One now, then one every 200 ms: no one-second window holds more than five.
        assert_eq!(got, [0, 200, 400, 600, 800, 1000, 1200]);
    }

    #[test]
    fn chats_are_paced_apart_but_share_the_installation_rate() {
        let pacer = Pacer::new();
        let now = Instant::now();
        let p = pacing(5.0, 8.0);
        assert_eq!(offsets(&pacer, p, "c1", now, 3), [0, 200, 400]);
        // Another chat has its own bucket, but waits for the installation's next token.
        assert_eq!(offsets(&pacer, p, "c2", now, 3), [525, 725, 925]);
        // Another installation is not affected.
        assert_eq!(pacer.reserve(p, "other", "c1", now), None);
        // Without a per-chat rate only the installation's applies.
        let p = pacing(0.0, 10.0);
        assert_eq!(
            offsets(&pacer, p, "c9", now + Duration::from_secs(9), 2),
            [0, 100]
        );
    }

    #[test]
    fn unlimited_never_waits_and_tokens_come_back_with_time() {
        let pacer = Pacer::new();
        let now = Instant::now();
        assert!(
            offsets(&pacer, Pacing::default(), "c", now, 100)
                .iter()
                .all(|&o| o == 0)
        );
        let p = pacing(2.0, 0.0);
        assert_eq!(offsets(&pacer, p, "c", now, 3), [0, 500, 1000]);
        // Well after the last send the token is back: none now, then the pace.
        let later = now + Duration::from_secs(3);
        assert_eq!(offsets(&pacer, p, "c", later, 2), [0, 500]);
    }

    #[test]
    fn a_slow_rate_below_one_per_second_spaces_every_send() {
        let pacer = Pacer::new();
        let now = Instant::now();
        assert_eq!(
            offsets(&pacer, pacing(0.5, 0.0), "c", now, 3),
            [0, 2000, 4000]
        );
    }

    #[tokio::test]
    async fn wait_sleeps_until_the_reserved_instant() {
        let pacer = Pacer::new();
        let p = pacing(10.0, 0.0);
        let start = Instant::now();
        for _ in 0..3 {
            pacer.wait(p, "i", "c").await;
        }
        // Three sends 100 ms apart: never sooner than 200 ms.
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
    }
}
