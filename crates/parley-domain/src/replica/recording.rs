//! The simulated recording: soft tones that follow the transcript, over a noise floor of its own.
//!
//! Each spoken turn is one segment: a tone whose pitch comes from the transcript up to that turn,
//! pulsed in word-like bursts. A faint noise floor drawn from a per-recording seed lies under
//! everything, so no two recordings share a run of audio bytes, even with the same transcript
//! (see `docs/API.md`): an erasure check can then tell one conversation's recording from another's.

use std::f64::consts::{PI, TAU};
use std::io::Cursor;
use std::ops::Range;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use super::transcript;
use crate::Conversation;

/// Samples per second: small files that any player opens.
const SAMPLE_RATE: u32 = 8_000;
/// Samples per millisecond.
const PER_MS: f64 = SAMPLE_RATE as f64 / 1_000.0;

/// The pitch every note is counted from, in semitones.
const A3_HZ: f64 = 220.0;
/// The replica's notes, semitones above A3: A major pentatonic, so no two turns clash.
const ASSISTANT_NOTES: [i32; 8] = [0, 2, 4, 7, 9, 12, 14, 16];
/// The user's notes: the same scale from E3, a lower voice.
const USER_NOTES: [i32; 8] = [-5, -3, -1, 2, 4, 7, 9, 11];

/// Peak of a tone's fundamental: with its harmonics the tone peaks near -12 dBFS, far from clipping.
const TONE_PEAK: f64 = 6_000.0;
/// Harmonics (multiple, level) that make the tone softer than a bare sine.
const HARMONICS: [(f64, f64); 3] = [(1.0, 1.0), (2.0, 0.3), (3.0, 0.1)];
/// The noise floor spans ±31 steps (about -60 dBFS): inaudible under the tones, but each sample
/// carries over five random bits, so 32 samples (64 bytes) of two recordings never coincide.
const NOISE_BITS: u32 = 5;

/// A word's natural length: a base plus so much per character, capped.
const WORD_BASE_MS: f64 = 90.0;
const WORD_PER_CHAR_MS: f64 = 35.0;
const WORD_MAX_MS: f64 = 500.0;
/// The pause between words at the natural pace.
const WORD_GAP_MS: f64 = 70.0;
/// Shorter bursts sound like clicks, so words squeezed below this merge.
const MIN_BURST_MS: f64 = 80.0;
/// Fade in and out of each burst, so it starts and stops without a click.
const RAMP_MS: f64 = 12.0;
/// The share of each turn's slot kept as a pause before the next turn.
const PAUSE_SHARE: f64 = 0.2;
/// Characters added to each turn's weight, so a short turn still gets a slot to speak in.
const SLOT_PAD_CHARS: usize = 20;

/// A mono 16-bit 8 kHz WAV of `secs` (at least one second) made from the conversation's transcript.
///
/// The pitches and rhythm depend only on the transcript; the noise floor and the tones' phases
/// come from `seed`, so two calls with the same transcript still get different bytes.
pub fn recording_wav(conversation: &Conversation, secs: u32, seed: u64) -> Vec<u8> {
    let samples = SAMPLE_RATE as usize * secs.max(1) as usize;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut audio: Vec<i16> = (0..samples).map(|_| noise(&mut rng)).collect();
    for segment in plan(conversation, samples) {
        let step = note_hz(segment.note) / f64::from(SAMPLE_RATE);
        let mut phase: f64 = rng.random();
        for burst in segment.bursts {
            let len = burst.len();
            for (i, sample) in audio[burst].iter_mut().enumerate() {
                // The noise is a whole number of steps, so rounding the tone alone keeps it intact.
                let tone = (envelope(i, len) * tone_at(phase)).round() as i16;
                *sample = sample.saturating_add(tone);
                phase = (phase + step).fract();
            }
        }
    }
    write_wav(&audio)
}

/// One spoken turn's place in the recording.
#[derive(Debug)]
struct Segment {
    /// Semitones above A3.
    note: i32,
    /// Its word-like bursts, as sample ranges of the whole recording.
    bursts: Vec<Range<usize>>,
}

/// Where each spoken turn goes in `samples`, and on which note.
///
/// Turns share the recording by the length of their text. A note depends on the whole transcript
/// up to its turn, the unspoken system prompt included, so any change upstream moves the tones.
fn plan(conversation: &Conversation, samples: usize) -> Vec<Segment> {
    let transcript = transcript(conversation);
    let mut hash = Fnv::default();
    let mut turns = Vec::new();
    for entry in transcript.as_array().into_iter().flatten() {
        let role = entry["role"].as_str().unwrap_or_default();
        let text = entry["content"].as_str().unwrap_or_default();
        hash.write(role.as_bytes());
        hash.write(text.as_bytes());
        let notes = match role {
            "system" => continue,
            "assistant" => &ASSISTANT_NOTES,
            _ => &USER_NOTES,
        };
        let note = notes[(hash.finish() % notes.len() as u64) as usize];
        turns.push((note, text, text.chars().count() + SLOT_PAD_CHARS));
    }
    let total = turns.iter().map(|(_, _, weight)| weight).sum::<usize>().max(1);
    let mut start = 0;
    let mut weight_so_far = 0;
    let mut segments = Vec::with_capacity(turns.len());
    for (note, text, weight) in turns {
        weight_so_far += weight;
        // From the running total, so the last slot ends exactly at the end of the recording.
        let end = (samples as u128 * weight_so_far as u128 / total as u128) as usize;
        let budget = ((end - start) as f64 * (1.0 - PAUSE_SHARE)) as usize;
        let bursts = word_bursts(text, budget)
            .into_iter()
            .map(|b| start + b.start..start + b.end)
            .collect();
        segments.push(Segment { note, bursts });
        start = end;
    }
    segments
}

/// Bursts for the words of `text` within `budget` samples, relative to the turn's start.
///
/// A slot long enough keeps the natural pace and leaves the rest silent; a short one squeezes
/// the words, merging those that would become too short to hear.
fn word_bursts(text: &str, budget: usize) -> Vec<Range<usize>> {
    let words: Vec<f64> = text
        .split_whitespace()
        .map(|w| (WORD_BASE_MS + WORD_PER_CHAR_MS * w.chars().count() as f64).min(WORD_MAX_MS))
        .collect();
    if words.is_empty() {
        return Vec::new();
    }
    let natural_ms = words.iter().sum::<f64>() + WORD_GAP_MS * (words.len() - 1) as f64;
    let scale = (budget as f64 / (natural_ms * PER_MS)).min(1.0);
    let at = |ms: f64| (ms * scale * PER_MS).round() as usize;
    let mut bursts: Vec<Range<usize>> = Vec::new();
    let mut t = 0.0;
    let mut group_start = None;
    for (i, word) in words.iter().enumerate() {
        let from = *group_start.get_or_insert(t);
        t += word;
        if (t - from) * scale >= MIN_BURST_MS || i + 1 == words.len() {
            bursts.push(at(from)..at(t));
            group_start = None;
        }
        t += WORD_GAP_MS;
    }
    if bursts.len() > 1 && (bursts[bursts.len() - 1].len() as f64) < MIN_BURST_MS * PER_MS {
        let last = bursts.pop().expect("more than one burst");
        bursts.last_mut().expect("more than one burst").end = last.end;
    }
    bursts
}

/// The pitch of a note, in Hz.
fn note_hz(note: i32) -> f64 {
    A3_HZ * 2f64.powf(f64::from(note) / 12.0)
}

/// The tone's value at `phase` (in turns), harmonics included.
fn tone_at(phase: f64) -> f64 {
    HARMONICS
        .iter()
        .map(|(multiple, level)| level * (TAU * multiple * phase).sin())
        .sum::<f64>()
        * TONE_PEAK
}

/// Gain of sample `i` of a burst of `len`: raised-cosine fades at both ends.
fn envelope(i: usize, len: usize) -> f64 {
    let ramp = (RAMP_MS * PER_MS).min(len as f64 / 3.0).max(1.0);
    let edge = i.min(len.saturating_sub(i + 1)) as f64 + 0.5;
    if edge >= ramp {
        1.0
    } else {
        0.5 - 0.5 * (PI * edge / ramp).cos()
    }
}

/// One sample of the noise floor: triangular (two uniform draws added), centred on zero.
fn noise(rng: &mut impl RngCore) -> i16 {
    let mask = (1 << NOISE_BITS) - 1;
    let r = rng.next_u32();
    ((r & mask) + ((r >> NOISE_BITS) & mask)) as i16 - mask as i16
}

fn write_wav(audio: &[i16]) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = Cursor::new(Vec::with_capacity(44 + 2 * audio.len()));
    {
        let mut writer =
            hound::WavWriter::new(&mut out, spec).expect("writing a WAV header to memory cannot fail");
        for &sample in audio {
            writer
                .write_sample(sample)
                .expect("writing to memory cannot fail");
        }
        writer.finalize().expect("writing to memory cannot fail");
    }
    out.into_inner()
}

/// FNV-1a, finished with a SplitMix64 mix: std's hasher may change between Rust releases, and a
/// transcript must keep its tones.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        // A separator, so that ("ab", "c") and ("a", "bc") hash apart.
        for &b in bytes.iter().chain([&0xff]) {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::tests::conversation;

    fn samples(wav: &[u8]) -> Vec<i16> {
        hound::WavReader::new(Cursor::new(wav))
            .unwrap()
            .into_samples::<i16>()
            .map(Result::unwrap)
            .collect()
    }

    /// The audio bytes: everything after hound's 44-byte header.
    fn data(wav: &[u8]) -> &[u8] {
        assert_eq!(&wav[36..40], b"data");
        &wav[44..]
    }

    /// Where `b` holds a run of `len` bytes that `a` also holds, at any offset of either.
    fn shared_run(a: &[u8], b: &[u8], len: usize) -> Option<(usize, usize)> {
        let prefix = |w: &[u8]| u64::from_le_bytes(w[..8].try_into().unwrap());
        let mut index: Vec<(u64, usize)> = a.windows(len).enumerate().map(|(i, w)| (prefix(w), i)).collect();
        index.sort_unstable();
        for (j, w) in b.windows(len).enumerate() {
            let key = prefix(w);
            let first = index.partition_point(|&(p, _)| p < key);
            for &(_, i) in index[first..].iter().take_while(|&&(p, _)| p == key) {
                if a[i..i + len] == *w {
                    return Some((i, j));
                }
            }
        }
        None
    }

    /// The strongest frequency among the semitones from A2 to A5, as semitones above A3.
    fn dominant_note(audio: &[i16]) -> i32 {
        let power = |note: i32| {
            // Goertzel: the power of one frequency, without a whole FFT.
            let coeff = 2.0 * (TAU * note_hz(note) / f64::from(SAMPLE_RATE)).cos();
            let (mut s1, mut s2) = (0.0, 0.0);
            for &x in audio {
                let s0 = f64::from(x) + coeff * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            s1 * s1 + s2 * s2 - coeff * s1 * s2
        };
        (-12..=24).max_by(|&a, &b| power(a).total_cmp(&power(b))).unwrap()
    }

    /// The dominant note of each turn, measured on its longest burst.
    fn heard_notes(conversation: &Conversation, wav: &[u8]) -> Vec<i32> {
        let audio = samples(wav);
        plan(conversation, audio.len())
            .into_iter()
            .map(|segment| {
                let longest = segment.bursts.into_iter().max_by_key(|b| b.len()).unwrap();
                let heard = dominant_note(&audio[longest]);
                assert_eq!(heard, segment.note, "a turn sounds on its planned note");
                heard
            })
            .collect()
    }

    #[test]
    fn recordings_are_valid_wavs_of_the_call_length() {
        for secs in [0, 1, 3, 300] {
            let wav = recording_wav(&conversation("pdced222244b"), secs, 7);
            let reader = hound::WavReader::new(Cursor::new(&wav)).unwrap();
            let spec = reader.spec();
            assert_eq!(
                (spec.channels, spec.sample_rate, spec.bits_per_sample),
                (1, 8_000, 16)
            );
            assert_eq!(spec.sample_format, hound::SampleFormat::Int);
            assert_eq!(reader.duration(), secs.max(1) * SAMPLE_RATE);
            assert_eq!(wav.len(), 44 + 2 * secs.max(1) as usize * SAMPLE_RATE as usize);
        }
    }

    #[test]
    fn recordings_are_audible_and_never_clip() {
        for secs in [1, 20] {
            let audio = samples(&recording_wav(&conversation("pdced222244b"), secs, 7));
            let peak = audio.iter().map(|s| s.unsigned_abs()).max().unwrap();
            assert!(
                (3_000..10_000).contains(&peak),
                "peak {peak} of a {secs} s recording"
            );
        }
    }

    #[test]
    fn every_spoken_turn_is_a_segment_of_its_own() {
        let c = conversation("pdced222244b");
        let spoken = transcript(&c).as_array().unwrap().len() - 1;
        let segments = plan(&c, 20 * SAMPLE_RATE as usize);
        assert_eq!(segments.len(), spoken);
        let bursts: Vec<_> = segments.iter().flat_map(|s| s.bursts.clone()).collect();
        assert!(bursts.iter().all(|b| !b.is_empty()));
        assert!(
            bursts.windows(2).all(|w| w[0].end < w[1].start),
            "bursts in order, with gaps"
        );
        assert!(bursts.last().unwrap().end <= 20 * SAMPLE_RATE as usize);
    }

    #[test]
    fn the_same_seed_makes_the_same_recording() {
        let c = conversation("pdced222244b");
        assert_eq!(recording_wav(&c, 2, 42), recording_wav(&c, 2, 42));
    }

    #[test]
    fn the_shared_run_check_finds_a_segment_two_recordings_have_in_common() {
        let c = conversation("pdced222244b");
        let a = recording_wav(&c, 1, 1);
        let mut b = recording_wav(&c, 1, 2);
        // At an odd offset, as a copy inside another file would not respect sample boundaries.
        b[1_001..1_001 + 64].copy_from_slice(&data(&a)[5_000..5_064]);
        assert!(shared_run(data(&a), data(&b), 64).is_some());
        assert!(shared_run(data(&a), data(&a), 64).is_some());
    }

    #[test]
    fn recordings_of_the_same_transcript_share_no_64_byte_run_of_audio() {
        let (a, mut b) = (conversation("pdced222244b"), conversation("pdced222244b"));
        b.id = crate::ConversationId::parse("c654321").unwrap();
        assert_eq!(transcript(&a), transcript(&b));
        // 1 s is the shortest call; 20 s leaves long pauses, where only the noise floor differs.
        for secs in [1, 20] {
            let (wav_a, wav_b) = (recording_wav(&a, secs, 1), recording_wav(&b, secs, 2));
            assert_eq!(shared_run(data(&wav_a), data(&wav_b), 64), None, "{secs} s");
            // Nor does a recording repeat itself, so a copy of part of it is always its own.
            let (first, second) = data(&wav_a).split_at(data(&wav_a).len() / 2);
            assert_eq!(shared_run(first, second, 64), None, "{secs} s");
        }
    }

    #[test]
    fn the_seed_changes_the_bytes_but_not_the_tune() {
        let c = conversation("pdced222244b");
        let (a, b) = (recording_wav(&c, 20, 1), recording_wav(&c, 20, 2));
        assert_ne!(a, b);
        assert_eq!(heard_notes(&c, &a), heard_notes(&c, &b));
    }

    #[test]
    fn different_transcripts_sound_different() {
        let pricing = conversation("pdced222244b");
        let mut hiring = conversation("pdced222244b");
        hiring.conversation_name = Some("hiring".into());
        // Only the unspoken system prompt differs: its tones move all the same.
        let mut other_context = conversation("pdced222244b");
        other_context.conversational_context = Some("MARKER-43".into());
        let tune = heard_notes(&pricing, &recording_wav(&pricing, 20, 1));
        for other in [hiring, other_context] {
            let other_tune = heard_notes(&other, &recording_wav(&other, 20, 1));
            let moved = tune.iter().zip(&other_tune).filter(|(a, b)| a != b).count();
            assert!(moved >= 2, "{tune:?} against {other_tune:?}");
        }
    }
}
