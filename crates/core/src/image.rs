//! PNG encoding of the RGB8 buffers that plotters' bitmap backend fills (the plots of
//! `evaluate` and `layer_sweep`).

use crate::{Error, Result};

/// Encodes an RGB8 buffer (as plotters' bitmap backend fills it) as PNG bytes.
pub fn rgb_to_png(buf: &[u8], w: u32, h: u32, op: &'static str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| Error::compute(op, e))?;
    writer
        .write_image_data(buf)
        .map_err(|e| Error::compute(op, e))?;
    writer.finish().map_err(|e| Error::compute(op, e))?;
    Ok(out)
}
