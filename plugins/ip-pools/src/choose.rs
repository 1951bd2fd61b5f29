//! The choice itself: resolve the pool to its sources; without a warm-up cap today, answer
//! the pool (reusable) and let the relay pick by weight; else skip the sources at today's
//! cap, pick one by weight, or hold the delivery until the next UTC midnight.

use plugin_sdk::prelude::*;

use crate::config::{canonical_source_key, Config, Reason};
use plugin_sdk::calendar::UtcDay;

/// Counters live two days: long enough to cover the whole UTC day they count, however late
/// in the day they are created, and then they clean themselves up.
pub(crate) const COUNTER_TTL_MS: u64 = 2 * plugin_sdk::calendar::MS_PER_DAY;

/// How long the relay may give an uncapped answer (the pool, or the single source) to other
/// deliveries with the same sender domain, destination domain, MX host and tags without
/// calling the plugin.
///
/// Why a minute: without a cap the answer depends only on the config, the tags and the
/// sender's domain (see [`choose`]): not on the message id, the local part, the counters or
/// the clock. The clock cannot make it wrong either as the schedules work now: a `warmup`
/// entry caps its source from the first call (before `start` the cap is `daily[0]`) and time
/// only ever ends a schedule, never starts one. A minute is the margin should that change
/// (a warm-up that starts tomorrow would then be noticed at most a minute after midnight),
/// and it still saves all but one call a minute per sender domain, destination and tags.
/// Capped answers are never reused: they depend on the counters and the day.
pub(crate) const REUSE_MS: u32 = 60_000;

/// One source the pool may send from.
#[derive(Debug)]
struct Candidate<'a> {
    /// The `[[source]]` name, the answer to the relay.
    name: &'a str,
    /// Its IP, canonical text: the counter key.
    ip: String,
    weight: u32,
    /// Today's warm-up cap; `None` for no cap.
    cap: Option<u64>,
}

/// What the pool name in the config turned out to be.
enum Target<'a> {
    /// A `[[pool]]`.
    Pool(&'a Pool),
    /// A single `[[source]]`, used like a pool of one.
    Source(&'a Source),
}

/// Answers `choose_ip` for one delivery with the checked config.
///
/// When no candidate has a warm-up cap today the answer is the target itself, reusable for
/// [`REUSE_MS`], and the relay picks a member by weight; otherwise the plugin counts and
/// picks a source itself, and the answer is never reused.
pub(crate) fn choose(config: &Config, input: &ChooseInput) -> ChooseVerdict {
    // `pool_for` reads the tags and only the part of the sender after its last `@`,
    // normalized (case, trailing dot): never the local part. The relay's reuse key holds the
    // sender's domain (after the last `@`, ASCII case folded) and every tag, so deliveries
    // that share a key always get the same pool here, and the uncapped answer below may be
    // reused whatever the local part. (Should `pool_for` ever match on the full address, the
    // reuse must be limited to the decisions that did not.)
    let Some((pool_name, reason)) = config.pool_for(&input.tags, &input.sender) else {
        return ChooseVerdict::no_opinion();
    };
    let target = match find_target(input, pool_name) {
        Some(target) => target,
        None => {
            plugin_sdk::error!(
                "{reason} names pool \"{pool_name}\", which is not a [[pool]] or [[source]] of the relay; \
                 no opinion for message {} to {}",
                input.message_id,
                input.domain
            );
            return ChooseVerdict::no_opinion();
        }
    };
    let today = UtcDay::from_unix_ms(host::now_ms());
    let mut open = candidates(config, input, &target, today);
    if open.is_empty() {
        plugin_sdk::error!(
            "pool \"{pool_name}\" ({reason}) has no member with a weight above 0 that names a [[source]]; \
             no opinion for message {} to {}",
            input.message_id,
            input.domain
        );
        return ChooseVerdict::no_opinion();
    }

    if open.iter().all(|candidate| candidate.cap.is_none()) {
        return uncapped(input, pool_name, &reason, &target);
    }

    let seed = spread_seed(&input.message_id, &input.domain);
    while let Some(index) = pick_weighted(seed, &open) {
        let candidate = &open[index];
        let Some(cap) = candidate.cap else {
            return chosen(input, pool_name, &reason, candidate, None);
        };
        // Take a slot first and give it back if it was over: two relay instances racing for
        // the last slot cannot both get it.
        let key = counter_key(&candidate.ip, today);
        let used = host::counter_add(&key, 1, Some(COUNTER_TTL_MS));
        if u64::try_from(used).is_ok_and(|used| used <= cap) {
            return chosen(input, pool_name, &reason, candidate, Some((used, cap)));
        }
        host::counter_add(&key, -1, Some(COUNTER_TTL_MS));
        open.swap_remove(index);
    }

    let until = today.next();
    plugin_sdk::info!(
        "pool \"{pool_name}\" ({reason}): every source is at its warm-up cap for {today}; \
         holding message {} to {} until {until}T00:00:00Z",
        input.message_id,
        input.domain
    );
    let choice = match target {
        Target::Pool(pool) => IpChoice::Pool(pool.name.clone()),
        Target::Source(source) => IpChoice::Source(source.name.clone()),
    };
    // Depends on the clock and the counters: never reused.
    ChooseVerdict {
        choice,
        not_before: Some(until.start_ms()),
        reuse_ms: 0,
    }
}

/// The answer when no candidate has a cap today: the pool (or the single source) itself, for
/// the relay to pick a member by weight (stably per message and destination, as
/// [`spread_seed`] does here), reusable for [`REUSE_MS`]. Nothing is counted.
fn uncapped(
    input: &ChooseInput,
    pool_name: &str,
    reason: &Reason,
    target: &Target<'_>,
) -> ChooseVerdict {
    plugin_sdk::debug!(
        "message {} to {}: pool \"{pool_name}\" ({reason}) has no warm-up cap today; \
         the relay picks a source by weight",
        input.message_id,
        input.domain
    );
    let verdict = match target {
        Target::Pool(pool) => ChooseVerdict::pool(&pool.name),
        Target::Source(source) => ChooseVerdict::source(&source.name),
    };
    verdict.reuse_for(REUSE_MS)
}

/// The counter of deliveries from `ip` on `day`: `sent:<ip>:<yyyy-mm-dd>`.
pub(crate) fn counter_key(ip: &str, day: UtcDay) -> String {
    format!("sent:{ip}:{day}")
}

fn chosen(
    input: &ChooseInput,
    pool_name: &str,
    reason: &Reason,
    candidate: &Candidate<'_>,
    count: Option<(i64, u64)>,
) -> ChooseVerdict {
    let count = count
        .map(|(used, cap)| format!(", {used}/{cap} today"))
        .unwrap_or_default();
    plugin_sdk::debug!(
        "message {} to {}: pool \"{pool_name}\" ({reason}) -> source \"{}\" ({}{count})",
        input.message_id,
        input.domain,
        candidate.name,
        candidate.ip
    );
    // Counted (or picked among counted ones) for this message: never reused.
    ChooseVerdict::source(candidate.name)
}

/// A pool by name, else a source by name.
fn find_target<'a>(input: &'a ChooseInput, name: &str) -> Option<Target<'a>> {
    if let Some(pool) = input.pools.iter().find(|pool| pool.name == name) {
        return Some(Target::Pool(pool));
    }
    input
        .sources
        .iter()
        .find(|source| source.name == name)
        .map(Target::Source)
}

/// The sources the target may send from, with their weights and today's caps.
fn candidates<'a>(
    config: &Config,
    input: &'a ChooseInput,
    target: &Target<'a>,
    today: UtcDay,
) -> Vec<Candidate<'a>> {
    let candidate = |source: &'a Source, weight: u32| Candidate {
        name: &source.name,
        ip: canonical_source_key(&source.ip),
        weight,
        cap: config
            .warmup_for(&source.ip, &source.name)
            .and_then(|warmup| warmup.cap_on(today)),
    };
    match target {
        Target::Source(source) => vec![candidate(source, 1)],
        Target::Pool(pool) => pool
            .members
            .iter()
            .filter(|member| member.weight > 0)
            .filter_map(|member| {
                let source = input
                    .sources
                    .iter()
                    .find(|source| source.name == member.source);
                if source.is_none() {
                    plugin_sdk::warn!(
                        "pool \"{}\": member \"{}\" is not a [[source]]; skipped",
                        pool.name,
                        member.source
                    );
                }
                source.map(|source| candidate(source, member.weight))
            })
            .collect(),
    }
}

/// A stable 64-bit value per (message, destination): the same delivery picks the same source
/// on every attempt and every platform, while different messages spread by weight.
fn spread_seed(message_id: &str, domain: &str) -> u64 {
    // FNV-1a, then the SplitMix64 finalizer so that ids differing in one digit land far apart.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in message_id
        .bytes()
        .chain([0xff])
        .chain(domain.to_ascii_lowercase().bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The index of the candidate whose share of the total weight contains `seed`; `None` when
/// there is nothing to pick from.
fn pick_weighted(seed: u64, candidates: &[Candidate<'_>]) -> Option<usize> {
    let total: u64 = candidates.iter().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return None;
    }
    // Multiply-shift maps the seed onto 0..total without the bias of `%`.
    let mut ticket = u64::try_from((u128::from(seed) * u128::from(total)) >> 64).unwrap_or(0);
    for (index, candidate) in candidates.iter().enumerate() {
        let weight = u64::from(candidate.weight);
        if ticket < weight {
            return Some(index);
        }
        ticket -= weight;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(name: &str, weight: u32) -> Candidate<'_> {
        Candidate {
            name,
            ip: name.to_owned(),
            weight,
            cap: None,
        }
    }

    #[test]
    fn the_seed_is_stable_and_spreads() {
        assert_eq!(
            spread_seed("m1", "a.example"),
            spread_seed("m1", "A.EXAMPLE")
        );
        assert_ne!(
            spread_seed("m1", "a.example"),
            spread_seed("m2", "a.example")
        );
        assert_ne!(
            spread_seed("m1", "a.example"),
            spread_seed("m1", "b.example")
        );
        // Pinned: the pick must not change between builds, versions or platforms.
        assert_eq!(spread_seed("msg-1", "example.org"), 0xda87_0493_97a8_fa5b);
        let high = (0..1000)
            .filter(|i| spread_seed(&format!("msg-{i}"), "x") >> 63 == 1)
            .count();
        assert!((430..570).contains(&high), "top bit set for {high} of 1000");
    }

    #[test]
    fn weighted_picks_follow_the_weights() {
        let pool = [candidate("a", 3), candidate("b", 1), candidate("z", 0)];
        let mut counts = [0; 3];
        for i in 0..4000 {
            let index = pick_weighted(spread_seed(&format!("msg-{i}"), "x"), &pool).expect("pick");
            counts[index] += 1;
        }
        assert!((2800..3200).contains(&counts[0]), "{counts:?}");
        assert_eq!(counts[2], 0, "weight 0 is never picked");
        assert_eq!(pick_weighted(0, &[]), None);
        assert_eq!(
            pick_weighted(u64::MAX, &pool),
            Some(1),
            "the top of the range is the last share"
        );
    }
}
