//! Just enough ELF parsing to tell whether an executable needs a dynamic
//! loader (it has a `PT_INTERP` program header).

const PT_INTERP: u32 = 3;

/// `Some(true)` for a static 64-bit little-endian ELF executable,
/// `Some(false)` for one that names an interpreter, `None` if `bytes` is not
/// such an ELF file.
pub fn is_static(bytes: &[u8]) -> Option<bool> {
    if bytes.get(..4)? != b"\x7fELF" || *bytes.get(4)? != 2 || *bytes.get(5)? != 1 {
        return None; // not ELF, not 64-bit, or not little-endian
    }
    let u16_at = |off: usize| -> Option<u16> {
        Some(u16::from_le_bytes(
            bytes.get(off..off + 2)?.try_into().ok()?,
        ))
    };
    let u32_at = |off: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            bytes.get(off..off + 4)?.try_into().ok()?,
        ))
    };
    let u64_at = |off: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            bytes.get(off..off + 8)?.try_into().ok()?,
        ))
    };
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    if phentsize < 4 {
        return None;
    }
    for i in 0..phnum {
        let entry = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(entry)? == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::is_static;

    #[test]
    fn a_dynamic_system_binary_is_not_static() {
        let bytes = std::fs::read("/bin/ls").expect("/bin/ls");
        assert_eq!(is_static(&bytes), Some(false));
    }

    #[test]
    fn garbage_and_truncated_headers_are_not_elf() {
        assert_eq!(is_static(b"#!/bin/sh\n"), None);
        assert_eq!(is_static(b"\x7fELF\x02\x01"), None);
        assert_eq!(is_static(&[]), None);
    }
}
