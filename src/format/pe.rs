//! The little of the PE/COFF format that a unified kernel image needs: whether a kernel is
//! an x86-64 bzImage with an EFI stub (firmware can start it), where the systemd stub's
//! sections end (the UKI's sections go after them), and pinning the header fields objcopy
//! fills from the clock, so the same inputs give the same bytes.

/// The facts of a PE image's headers.
struct Headers {
    /// Offset of the `PE\0\0` signature.
    pe: usize,
    /// Offset of the optional header.
    optional: usize,
    sections: usize,
    section_table: usize,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn headers(b: &[u8]) -> Option<Headers> {
    if b.get(0..2)? != b"MZ" {
        return None;
    }
    let pe = u32_at(b, 0x3c)? as usize;
    if b.get(pe..pe + 4)? != b"PE\0\0" || u16_at(b, pe + 4)? != 0x8664 {
        return None;
    }
    let sections = u16_at(b, pe + 6)? as usize;
    let optional_size = u16_at(b, pe + 20)? as usize;
    let optional = pe + 24;
    // PE32+: what x86-64 EFI binaries are.
    if u16_at(b, optional)? != 0x20b {
        return None;
    }
    Some(Headers {
        pe,
        optional,
        sections,
        section_table: optional + optional_size,
    })
}

/// Why firmware cannot start `kernel` as a UKI's `.linux`, if it cannot: it must be an
/// x86 bzImage (boot protocol header `HdrS`) built with `CONFIG_EFI_STUB` (a PE32+ image
/// for x86-64).
pub(crate) fn check_efi_stub_kernel(kernel: &[u8]) -> Result<(), String> {
    if kernel.get(0x202..0x206) != Some(b"HdrS") {
        return Err("it is not an x86 bzImage (no boot protocol header)".into());
    }
    if headers(kernel).is_none() {
        return Err(
            "it has no EFI stub (not a PE32+ x86-64 image): build it with CONFIG_EFI_STUB=y".into(),
        );
    }
    Ok(())
}

/// Where the sections a UKI adds start in a stub, and what they align to.
pub(crate) struct Placement {
    /// The first address past the stub's sections, aligned (objcopy's
    /// `--change-section-vma`, image base included).
    pub start: u64,
    /// A page, or the stub's section alignment where that is larger.
    pub align: u64,
}

/// Where a UKI's sections go after `stub`'s own.
pub(crate) fn placement(stub: &[u8]) -> Result<Placement, String> {
    let h = headers(stub).ok_or("not a PE32+ x86-64 EFI binary")?;
    let image_base = u64::from_le_bytes(
        stub.get(h.optional + 24..h.optional + 32)
            .and_then(|s| s.try_into().ok())
            .ok_or("truncated optional header")?,
    );
    let section_alignment = u32_at(stub, h.optional + 32).ok_or("truncated optional header")?;
    let align = (section_alignment as u64).max(4096);
    if !align.is_power_of_two() {
        return Err(format!(
            "section alignment {section_alignment:#x} is not a power of two"
        ));
    }
    let mut end = 0u64;
    for i in 0..h.sections {
        let at = h.section_table + 40 * i;
        let virtual_size = u32_at(stub, at + 8).ok_or("truncated section table")? as u64;
        let address = u32_at(stub, at + 12).ok_or("truncated section table")? as u64;
        let raw_size = u32_at(stub, at + 16).ok_or("truncated section table")? as u64;
        end = end.max(address + virtual_size.max(raw_size));
    }
    Ok(Placement {
        start: image_base + end.next_multiple_of(align),
        align,
    })
}

/// Sets the COFF time stamp to 0 and recomputes the image checksum: objcopy writes the
/// time of the run there.
pub(crate) fn pin_timestamp(image: &mut [u8]) -> Result<(), String> {
    let h = headers(image).ok_or("not a PE32+ x86-64 EFI binary")?;
    image[h.pe + 8..h.pe + 12].fill(0);
    let checksum_at = h.optional + 64;
    if image.len() < checksum_at + 4 {
        return Err("truncated optional header".into());
    }
    image[checksum_at..checksum_at + 4].fill(0);
    let sum = checksum(image);
    image[checksum_at..checksum_at + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

/// The PE image checksum (of an image whose checksum field is zero): 16-bit one's
/// complement-style sum with carries folded, plus the length.
fn checksum(image: &[u8]) -> u32 {
    let mut sum: u64 = 0;
    for chunk in image.chunks(2) {
        let word = chunk[0] as u64 | (*chunk.get(1).unwrap_or(&0) as u64) << 8;
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(image.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ header with one section at 0x4000 of 0x1234 bytes.
    fn image() -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[0..2].copy_from_slice(b"MZ");
        b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        b[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
        b[0x86..0x88].copy_from_slice(&1u16.to_le_bytes());
        b[0x88..0x8c].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        b[0x94..0x96].copy_from_slice(&240u16.to_le_bytes());
        b[0x98..0x9a].copy_from_slice(&0x20bu16.to_le_bytes());
        let section = 0x98 + 240;
        b[section + 8..section + 12].copy_from_slice(&0x1234u32.to_le_bytes());
        b[section + 12..section + 16].copy_from_slice(&0x4000u32.to_le_bytes());
        b
    }

    #[test]
    fn sections_end_on_a_page_and_the_clock_is_pinned() {
        let mut b = image();
        let at = placement(&b).unwrap();
        assert_eq!((at.start, at.align), (0x6000, 4096));
        // A raw size past the virtual one counts, and a larger alignment is kept.
        let section = 0x98 + 240;
        b[section + 16..section + 20].copy_from_slice(&0x2400u32.to_le_bytes());
        b[0x98 + 32..0x98 + 36].copy_from_slice(&0x10000u32.to_le_bytes());
        let at = placement(&b).unwrap();
        assert_eq!((at.start, at.align), (0x10000, 0x10000));
        pin_timestamp(&mut b).unwrap();
        assert_eq!(&b[0x88..0x8c], &[0, 0, 0, 0]);
        let stored = u32::from_le_bytes(b[0x98 + 64..0x98 + 68].try_into().unwrap());
        let mut zeroed = b.clone();
        zeroed[0x98 + 64..0x98 + 68].fill(0);
        assert_eq!(stored, checksum(&zeroed));
        assert!(placement(b"not a PE").is_err());
    }

    #[test]
    fn a_kernel_needs_the_boot_header_and_an_efi_stub() {
        let mut kernel = image();
        assert!(check_efi_stub_kernel(&kernel)
            .unwrap_err()
            .contains("not an x86 bzImage"));
        kernel[0x202..0x206].copy_from_slice(b"HdrS");
        check_efi_stub_kernel(&kernel).unwrap();
        kernel[0..2].copy_from_slice(b"\xeb\x00");
        assert!(check_efi_stub_kernel(&kernel)
            .unwrap_err()
            .contains("CONFIG_EFI_STUB"));
    }
}
