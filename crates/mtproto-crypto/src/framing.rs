//! MTProto 2.0 message framing: padding, msg_key, encryption, and every receive-side check.
//!
//! ```text
//! packet    = key_id (8) ‖ msg_key (16) ‖ encrypt(payload ‖ padding)
//! payload   = header ‖ data            (the header carries the data length at a fixed offset)
//! padding   = 12..=1024 random bytes, so that payload ‖ padding is a multiple of 16
//! ```

use core::ops::Range;

use rand_core::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::{
    hazmat,
    kdf::{derive_aes, msg_key, Direction},
    key::FramingKey,
    Error, MsgKey, Result,
};

/// The block mode under the KDF. A parameter of the framing, not a copy of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// AES-256-CBC with the IV rule of [`crate::kdf::AesKeyIv::cbc_iv`]: this system's messages
    /// (the browser has CBC in Web Crypto but no IGE).
    Cbc,
    /// AES-256-IGE: genuine MTProto 2.0 packets.
    Ige,
}

/// Where the payload keeps the length of its data, so that padding can be told from data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    /// Offset of the little-endian `u32` data length inside the payload.
    pub length_offset: usize,
    /// Offset where the data starts (the header length).
    pub data_offset: usize,
    /// The data length must be a multiple of this (4 for TL data, 1 for opaque bytes).
    pub align: usize,
}

impl Layout {
    /// MTProto's encrypted message: salt, session_id, msg_id, seq_no, then the length at 28;
    /// data at 32, a multiple of 4 (MTProto "Detailed Description", "Encrypted Message").
    pub const MTPROTO: Self = Self {
        length_offset: 28,
        data_offset: 32,
        align: 4,
    };
    /// The same header carrying opaque (JSON) data of any length: this relay's envelope.
    pub const MTPROTO_OPAQUE: Self = Self {
        length_offset: 28,
        data_offset: 32,
        align: 1,
    };
    /// A secret-chat message: the length first, data at 4 (Telegram end-to-end encryption).
    pub const SECRET_CHAT: Self = Self {
        length_offset: 0,
        data_offset: 4,
        align: 4,
    };
    /// A length prefix and opaque data of any length: this system's end-to-end layer.
    pub const LENGTH_PREFIXED: Self = Self {
        length_offset: 0,
        data_offset: 4,
        align: 1,
    };
}

/// A framing: block mode plus payload layout.
///
/// ```
/// use mtproto_crypto::{AuthKey, Direction, Framing, Layout, Mode};
/// let key = AuthKey::from_bytes(core::array::from_fn(|i| i as u8));
/// let framing = Framing::new(Mode::Cbc, Layout::LENGTH_PREFIXED);
/// let mut payload = 5u32.to_le_bytes().to_vec();
/// payload.extend_from_slice(b"hello");
/// let packet = framing.seal(&key, Direction::ClientToServer, &payload, &mut rand_core::OsRng)?;
/// let opened = framing.open(&key, Direction::ClientToServer, &packet)?;
/// assert_eq!(opened.data(), b"hello");
/// // Wrong direction, wrong key or a flipped bit: one opaque error.
/// assert!(framing.open(&key, Direction::ServerToClient, &packet).is_err());
/// # Ok::<(), mtproto_crypto::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Framing {
    mode: Mode,
    layout: Layout,
}

/// Bytes in front of the ciphertext: key id and msg_key.
pub const OUTER_HEADER_LEN: usize = 24;
/// Fewest padding bytes MTProto 2.0 allows.
pub const MIN_PADDING: usize = 12;
/// Most padding bytes MTProto 2.0 allows.
pub const MAX_PADDING: usize = 1024;
/// Largest data length this framing will seal or open (16 MiB).
pub const MAX_DATA_LEN: usize = 1 << 24;

impl Framing {
    /// A framing with the given mode and layout.
    pub const fn new(mode: Mode, layout: Layout) -> Self {
        Self { mode, layout }
    }

    /// The block mode.
    pub const fn mode(&self) -> Mode {
        self.mode
    }

    /// The payload layout.
    pub const fn layout(&self) -> Layout {
        self.layout
    }

    fn check_payload(&self, payload: &[u8]) -> Result<()> {
        let l = self.layout;
        let bad = |got| Error::LengthOutOfRange {
            what: "payload data",
            got,
            min: 0,
            max: MAX_DATA_LEN,
        };
        let data_len = payload
            .len()
            .checked_sub(l.data_offset)
            .ok_or(bad(payload.len()))?;
        let declared = read_len(payload, l.length_offset).ok_or(bad(payload.len()))?;
        if declared != data_len || data_len > MAX_DATA_LEN || data_len % l.align.max(1) != 0 {
            return Err(bad(data_len));
        }
        Ok(())
    }

    /// Seals `payload` (header and data, its length field already written) with random padding.
    ///
    /// # Errors
    /// [`Error::LengthOutOfRange`] when the payload's length field does not match its data.
    pub fn seal<K: FramingKey>(
        &self,
        key: &K,
        direction: Direction,
        payload: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Vec<u8>> {
        self.check_payload(payload)?;
        // Padding: the minimum that aligns (12..=27 bytes) plus 0..=3 random extra blocks, so
        // equal lengths do not always give equal packet sizes. One RNG call gives the choice
        // of extra blocks (first byte) and the padding bytes.
        let min = MIN_PADDING + (16 - (payload.len() + MIN_PADDING) % 16) % 16;
        let mut random = [0u8; 1 + 27 + 48];
        rng.fill_bytes(&mut random);
        let [choice, pad_bytes @ ..] = random;
        let pad = min + 16 * usize::from(choice % 4);
        let mut out = Vec::with_capacity(OUTER_HEADER_LEN + payload.len() + pad);
        out.extend_from_slice(key.key_id().as_bytes());
        out.extend_from_slice(&[0u8; 16]);
        out.extend_from_slice(payload);
        out.extend_from_slice(pad_bytes.get(..pad).unwrap_or_default());
        self.encrypt_tail_or_wipe(key, direction, &mut out)?;
        Ok(out)
    }

    /// Seals with caller-chosen padding: for known-answer tests and replays of recorded packets.
    ///
    /// # Errors
    /// [`Error::LengthOutOfRange`] when the padding is outside 12..=1024 bytes or does not make
    /// the total a multiple of 16, or the payload's length field does not match its data.
    pub fn seal_with_padding<K: FramingKey>(
        &self,
        key: &K,
        direction: Direction,
        payload: &[u8],
        padding: &[u8],
    ) -> Result<Vec<u8>> {
        self.check_payload(payload)?;
        if !(MIN_PADDING..=MAX_PADDING).contains(&padding.len())
            || !(payload.len() + padding.len()).is_multiple_of(16)
        {
            return Err(Error::LengthOutOfRange {
                what: "padding",
                got: padding.len(),
                min: MIN_PADDING,
                max: MAX_PADDING,
            });
        }
        let mut out = Vec::with_capacity(OUTER_HEADER_LEN + payload.len() + padding.len());
        out.extend_from_slice(key.key_id().as_bytes());
        out.extend_from_slice(&[0u8; 16]);
        out.extend_from_slice(payload);
        out.extend_from_slice(padding);
        self.encrypt_tail_or_wipe(key, direction, &mut out)?;
        Ok(out)
    }

    /// Encrypts in place; should that fail, wipes the plaintext before the buffer is dropped.
    fn encrypt_tail_or_wipe<K: FramingKey>(
        &self,
        key: &K,
        direction: Direction,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.encrypt_tail(key, direction, out)
            .inspect_err(|_| out.zeroize())
    }

    fn encrypt_tail<K: FramingKey>(&self, key: &K, direction: Direction, out: &mut [u8]) -> Result<()> {
        let Some((head, body)) = out.split_first_chunk_mut::<OUTER_HEADER_LEN>() else {
            return Err(Error::NotBlockAligned { got: out.len() });
        };
        let mk = msg_key(key.expose_secret(), direction, body);
        let aes = derive_aes(key.expose_secret(), &mk, direction);
        match self.mode {
            Mode::Cbc => hazmat::aes256_cbc_encrypt(&aes.key, &aes.cbc_iv(), body)?,
            Mode::Ige => hazmat::aes256_ige_encrypt(&aes.key, &aes.iv, body)?,
        }
        head[8..].copy_from_slice(mk.as_bytes());
        Ok(())
    }

    /// Checks and decrypts a packet in place. On success returns the range of the payload
    /// (header and data, padding excluded) inside `packet`; on failure the decrypted bytes are
    /// wiped.
    ///
    /// Checks, in the order of MTProto's security guidelines: length `24 + 16n`, key id,
    /// decryption, msg_key (constant time, always computed once decryption ran), then the
    /// length field and the 12..=1024 padding bounds.
    ///
    /// # Errors
    /// [`Error::Decrypt`] for every failure, whatever its cause.
    pub fn open_in_place<K: FramingKey>(
        &self,
        key: &K,
        direction: Direction,
        packet: &mut [u8],
    ) -> Result<Range<usize>> {
        let n = packet.len();
        if n < OUTER_HEADER_LEN + 16 || !(n - OUTER_HEADER_LEN).is_multiple_of(16) {
            return Err(Error::Decrypt);
        }
        let Some((head, body)) = packet.split_first_chunk_mut::<OUTER_HEADER_LEN>() else {
            return Err(Error::Decrypt);
        };
        let id_ok = head[..8].ct_eq(key.key_id().as_bytes());
        let mut claimed = [0u8; 16];
        claimed.copy_from_slice(&head[8..]);
        let claimed = MsgKey::from_bytes(claimed);
        let aes = derive_aes(key.expose_secret(), &claimed, direction);
        let decrypted = match self.mode {
            Mode::Cbc => hazmat::aes256_cbc_decrypt(&aes.key, &aes.cbc_iv(), body),
            Mode::Ige => hazmat::aes256_ige_decrypt(&aes.key, &aes.iv, body),
        };
        let computed = msg_key(key.expose_secret(), direction, body);
        let mac_ok = computed.as_bytes().ct_eq(claimed.as_bytes());
        let payload_len = self.payload_len(body);
        match (bool::from(id_ok & mac_ok), decrypted, payload_len) {
            (true, Ok(()), Some(len)) => Ok(OUTER_HEADER_LEN..OUTER_HEADER_LEN + len),
            _ => {
                body.zeroize();
                Err(Error::Decrypt)
            }
        }
    }

    /// The payload length if the length field and padding bounds hold (MTProto 2.0: data length
    /// within the buffer, aligned, and 12..=1024 bytes of padding after it).
    fn payload_len(&self, plaintext: &[u8]) -> Option<usize> {
        let l = self.layout;
        let data_len = read_len(plaintext, l.length_offset)?;
        let payload = l.data_offset.checked_add(data_len)?;
        let pad = plaintext.len().checked_sub(payload)?;
        let ok = data_len <= MAX_DATA_LEN
            && data_len % l.align.max(1) == 0
            && (MIN_PADDING..=MAX_PADDING).contains(&pad);
        ok.then_some(payload)
    }

    /// Checks and decrypts a packet into a new buffer that is wiped on drop.
    ///
    /// # Errors
    /// [`Error::Decrypt`] for every failure, whatever its cause.
    pub fn open<K: FramingKey>(&self, key: &K, direction: Direction, packet: &[u8]) -> Result<Opened> {
        let mut buf = Zeroizing::new(packet.to_vec());
        let range = self.open_in_place(key, direction, &mut buf)?;
        Ok(Opened {
            buf,
            range,
            data_offset: self.layout.data_offset,
        })
    }
}

fn read_len(payload: &[u8], offset: usize) -> Option<usize> {
    let bytes: [u8; 4] = payload.get(offset..offset.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(bytes)).ok()
}

/// A decrypted, checked message. Its buffer is wiped on drop.
pub struct Opened {
    buf: Zeroizing<Vec<u8>>,
    range: Range<usize>,
    data_offset: usize,
}

impl Opened {
    /// Header and data, without padding.
    pub fn payload(&self) -> &[u8] {
        self.buf.get(self.range.clone()).unwrap_or_default()
    }

    /// The data after the header.
    pub fn data(&self) -> &[u8] {
        self.payload().get(self.data_offset..).unwrap_or_default()
    }

    /// The msg_key the packet carried (verified).
    pub fn msg_key(&self) -> MsgKey {
        let mut k = [0u8; 16];
        if let Some(src) = self.buf.get(8..OUTER_HEADER_LEN) {
            k.copy_from_slice(src);
        }
        MsgKey::from_bytes(k)
    }
}

impl core::fmt::Debug for Opened {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Opened")
            .field("payload_len", &self.range.len())
            .finish_non_exhaustive()
    }
}
