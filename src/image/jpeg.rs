//! JPEG pixels as Pillow decodes them. Pillow's wheels decode with libjpeg-turbo: the integer
//! ("islow") IDCT, fancy upsampling of subsampled chroma, its YCbCr → RGB tables; libjpeg's
//! warnings are silenced, but a file that ends before its image does is an error ("image file is
//! truncated"). The same C code (mozjpeg's decoder is libjpeg-turbo's) with the same settings
//! gives the same bytes; `image`'s pure-Rust decoder differs by a few levels per pixel. CMYK
//! (and YCCK, which libjpeg turns into CMYK) JPEGs are read as Pillow reads them, inverted
//! (Adobe's convention, which Pillow assumes for every CMYK JPEG), and converted to RGB by
//! Pillow's `cmyk2rgb`.

use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use mozjpeg::decompress::{DecompressBuilder, Format};
use mozjpeg::DctMethod;
use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, jpeg_std_error, JWRN_JPEG_EOF};

/// The decoded pixels: 3 channels (RGB) or 1 (grey), row-major.
pub struct JpegPixels {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

/// Decodes a baseline or progressive JPEG in RGB, greyscale, CMYK or YCCK (the last two as
/// RGB; libjpeg converts any other colour space to RGB itself). The header was read (and its
/// size bounded) by the caller.
pub fn decode(bytes: &[u8]) -> Result<JpegPixels, String> {
    // libjpeg reports a fatal error by unwinding out of the C code (`error_exit` below): caught
    // here, with the library's message as the payload.
    let decoded = catch_unwind(AssertUnwindSafe(|| -> std::io::Result<JpegPixels> {
        let mut decompress = DecompressBuilder::new()
            .with_err(error_manager())
            .from_mem(bytes)?;
        decompress.dct_method(DctMethod::IntegerSlow);
        decompress.do_fancy_upsampling(true);
        let (mut started, channels, cmyk) = match decompress.image()? {
            Format::RGB(started) => (started, 3, false),
            Format::Gray(started) => (started, 1, false),
            Format::CMYK(started) => (started, 3, true),
        };
        let (width, height) = (started.width(), started.height());
        let mut data: Vec<u8> = started.read_scanlines()?;
        started.finish()?;
        if cmyk {
            data = rgb_of_inverted_cmyk(&data);
        }
        Ok(JpegPixels {
            width,
            height,
            channels,
            data,
        })
    }));
    match decoded {
        Ok(Ok(pixels)) => Ok(pixels),
        Ok(Err(error)) => Err(error.to_string()),
        Err(payload) => Err(payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "libjpeg failed".into())),
    }
}

/// Pillow's reading of CMYK JPEG samples (`CMYK;I`: each one inverted) followed by its
/// `convert("RGB")` (`cmyk2rgb`: each colour is (255 - K) - C x (255 - K) / 255, in its rounding).
fn rgb_of_inverted_cmyk(samples: &[u8]) -> Vec<u8> {
    // Pillow's MULDIV255: a * b / 255, rounded, in integers.
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    samples
        .chunks_exact(4)
        .flat_map(|px| {
            // 255 - K, with K the inverted sample: the sample itself.
            let nk = u32::from(px[3]);
            let colour = |c: u8| (nk - muldiv255(u32::from(255 - c), nk)) as u8;
            [colour(px[0]), colour(px[1]), colour(px[2])]
        })
        .collect()
}

fn error_manager() -> jpeg_error_mgr {
    // SAFETY: jpeg_error_mgr is a plain C struct for which all-zero is a valid start (function
    // pointers as None); jpeg_std_error fills in libjpeg's defaults and keeps no pointer to it.
    let mut manager: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    // SAFETY: `manager` is a valid, writable jpeg_error_mgr.
    unsafe { jpeg_std_error(&mut manager) };
    manager.error_exit = Some(error_exit);
    manager.emit_message = Some(emit_message);
    manager
}

/// libjpeg's message for the error or warning being reported.
fn message(cinfo: &mut jpeg_common_struct) -> String {
    // libjpeg's JMSG_LENGTH_MAX: format_message writes at most this many bytes, NUL included.
    let mut buffer = [0u8; 200];
    // SAFETY: `err` is the manager installed above (set by the library before any report). The
    // binding declares the buffer as `&[u8; 80]`; the C function takes a `char *` it writes up
    // to 200 bytes into, so it is called through that signature (a pointer either way) with a
    // buffer of 200.
    unsafe {
        if let Some(format) = cinfo.err.as_ref().and_then(|e| e.format_message) {
            let format = std::mem::transmute::<
                unsafe extern "C-unwind" fn(&mut jpeg_common_struct, &[u8; 80]),
                unsafe extern "C-unwind" fn(&mut jpeg_common_struct, *mut u8),
            >(format);
            format(cinfo, buffer.as_mut_ptr());
        }
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    let text = message(cinfo);
    std::panic::resume_unwind(Box::new(text));
}

/// Warnings are silent, as in Pillow, except the end of the data before the end of the image:
/// Pillow refuses such a file ("image file is truncated").
extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    // SAFETY: `err` points at this decoder's error manager while it reports.
    let code = unsafe { cinfo.err.as_ref().map_or(0, |e| e.msg_code) };
    if level < 0 && code == JWRN_JPEG_EOF as c_int {
        std::panic::resume_unwind(Box::new("image file is truncated".to_string()));
    }
}
