//! GUID partition tables, written without sgdisk: a protective MBR, the primary header and
//! entry array at the start of the disk, their backup at its end. Partition types follow
//! the Discoverable Partitions Specification, so systemd's tools (and firmware, for the
//! ESP) recognise them; every GUID is given by the caller, so the same inputs give the
//! same bytes.

/// 512-byte logical blocks: what qemu, bhyve and OVMF use for a raw image.
pub(crate) const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries.
pub(crate) const ALIGN: u64 = 1 << 20;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Sectors the entry array takes (128 entries of 128 bytes).
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;

/// The EFI system partition's type.
pub(crate) const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// "Root partition (x86-64)" in the Discoverable Partitions Specification.
pub(crate) const ROOT_X86_64_TYPE: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";

/// A partition: where it lies, in bytes (both multiples of `SECTOR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Partition {
    pub name: &'static str,
    pub type_guid: &'static str,
    pub guid: [u8; 16],
    pub start: u64,
    pub size: u64,
}

/// A GUID in its text form (`xxxxxxxx-xxxx-...`, as tools print it) from 16 bytes in
/// the order the text reads.
pub(crate) fn guid_text(bytes: &[u8; 16]) -> String {
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// 16 bytes from `seed` shaped as an RFC 4122 version 4 GUID (text order): random-looking,
/// but fixed by the seed.
pub(crate) fn guid_from(seed: &[u8]) -> [u8; 16] {
    let digest = crate::hashing::sha256_hex(seed);
    let mut bytes = [0u8; 16];
    hex::decode_to_slice(&digest[..32], &mut bytes).expect("sha256 hex");
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes
}

/// A GUID as GPT stores it: the first three fields little-endian.
fn guid_disk_bytes(text_order: &[u8; 16]) -> [u8; 16] {
    let mut b = *text_order;
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

fn parse_guid(text: &str) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    hex::decode_to_slice(text.replace('-', ""), &mut bytes).expect("a GUID constant");
    bytes
}

/// The first byte a partition may use (aligned: the table ends at 17 KiB).
pub(crate) fn first_usable() -> u64 {
    ALIGN
}

/// The disk size that leaves room for the backup table after `end` (the first byte past
/// the last partition), rounded up to `ALIGN`.
pub(crate) fn disk_size_for(end: u64) -> u64 {
    (end + (ENTRY_SECTORS + 1) * SECTOR).next_multiple_of(ALIGN)
}

/// The table's blocks: what goes at byte 0 (protective MBR, primary header, entries) and
/// what goes at `disk_size - tail.len()` (backup entries, backup header).
pub(crate) struct Table {
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
}

/// The GPT of a `disk_size`-byte disk with `partitions`, which must lie between
/// `first_usable()` and the backup table, in order, without overlap.
pub(crate) fn table(disk_guid: &[u8; 16], partitions: &[Partition], disk_size: u64) -> Table {
    let last_lba = disk_size / SECTOR - 1;
    let first_usable_lba = 2 + ENTRY_SECTORS;
    let last_usable_lba = last_lba - 1 - ENTRY_SECTORS;
    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, p) in partitions.iter().enumerate() {
        debug_assert!(p.start >= first_usable_lba * SECTOR && p.start % SECTOR == 0);
        debug_assert!((p.start + p.size) / SECTOR - 1 <= last_usable_lba);
        let e = &mut entries[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&guid_disk_bytes(&parse_guid(p.type_guid)));
        e[16..32].copy_from_slice(&guid_disk_bytes(&p.guid));
        e[32..40].copy_from_slice(&(p.start / SECTOR).to_le_bytes());
        e[40..48].copy_from_slice(&((p.start + p.size) / SECTOR - 1).to_le_bytes());
        for (j, unit) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
        }
    }
    let entries_crc = crc32fast::hash(&entries);
    let header = |this_lba: u64, other_lba: u64, entries_lba: u64| -> Vec<u8> {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&this_lba.to_le_bytes());
        h[32..40].copy_from_slice(&other_lba.to_le_bytes());
        h[40..48].copy_from_slice(&first_usable_lba.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable_lba.to_le_bytes());
        h[56..72].copy_from_slice(&guid_disk_bytes(disk_guid));
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let mut mbr = vec![0u8; SECTOR as usize];
    // One partition of type 0xEE over the whole disk (or as much as 32 bits can say).
    let p = &mut mbr[446..462];
    p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    p[4] = 0xEE;
    p[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    p[8..12].copy_from_slice(&1u32.to_le_bytes());
    p[12..16].copy_from_slice(&(last_lba.min(u32::MAX as u64) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;

    let mut head = mbr;
    head.extend(header(1, last_lba, 2));
    head.extend(&entries);
    let mut tail = entries;
    tail.extend(header(last_lba, 1, last_lba - ENTRY_SECTORS));
    Table { head, tail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_read_as_tools_print_them_and_are_fixed_by_their_seed() {
        let g = guid_from(b"seed");
        assert_eq!(g, guid_from(b"seed"));
        assert_ne!(g, guid_from(b"other"));
        let text = guid_text(&g);
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4", "version 4: {text}");
        assert!("89ab".contains(&text[19..20]), "variant: {text}");
        // The type GUID of the ESP as GPT stores it (mixed endian).
        assert_eq!(
            hex::encode(guid_disk_bytes(&parse_guid(ESP_TYPE))),
            "28732ac11ff8d211ba4b00a0c93ec93b"
        );
    }

    #[test]
    fn the_table_checksums_hold_and_the_backup_mirrors_the_primary() {
        let size = disk_size_for(3 * ALIGN);
        let parts = [
            Partition {
                name: "esp",
                type_guid: ESP_TYPE,
                guid: guid_from(b"a"),
                start: ALIGN,
                size: ALIGN,
            },
            Partition {
                name: "root-x86-64",
                type_guid: ROOT_X86_64_TYPE,
                guid: guid_from(b"b"),
                start: 2 * ALIGN,
                size: ALIGN,
            },
        ];
        let t = table(&guid_from(b"disk"), &parts, size);
        assert_eq!(t.head.len() as u64, (2 + ENTRY_SECTORS) * SECTOR);
        assert_eq!(t.tail.len() as u64, (1 + ENTRY_SECTORS) * SECTOR);
        assert_eq!(&t.head[510..512], &[0x55, 0xAA]);
        let primary = &t.head[512..1024];
        let backup = &t.tail[t.tail.len() - 512..];
        for h in [primary, backup] {
            assert_eq!(&h[0..8], b"EFI PART");
            let mut zeroed = h[..92].to_vec();
            zeroed[16..20].fill(0);
            assert_eq!(
                u32::from_le_bytes(h[16..20].try_into().unwrap()),
                crc32fast::hash(&zeroed)
            );
        }
        assert_eq!(&t.head[1024..], &t.tail[..t.tail.len() - 512]);
        let lba = |h: &[u8], at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap());
        let last = size / SECTOR - 1;
        // Each header names itself, the other, and its own entry array.
        assert_eq!(
            (lba(primary, 24), lba(primary, 32), lba(primary, 72)),
            (1, last, 2)
        );
        assert_eq!(
            (lba(backup, 24), lba(backup, 32), lba(backup, 72)),
            (last, 1, last - ENTRY_SECTORS)
        );
        assert_eq!((lba(primary, 40), lba(primary, 48)), (34, last - 33));
        assert_eq!(
            u32::from_le_bytes(primary[88..92].try_into().unwrap()),
            crc32fast::hash(&t.head[1024..])
        );
        let entry = &t.head[1024 + 128..1024 + 256];
        assert_eq!(u64::from_le_bytes(entry[32..40].try_into().unwrap()), 4096);
        assert_eq!(u64::from_le_bytes(entry[40..48].try_into().unwrap()), 6143);
    }
}
