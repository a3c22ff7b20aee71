//! dconv's photograph loader and the numpy one in scripts/image_tensor.py must produce the
//! same bits, or ORT and dconv would be compared on different inputs. The numpy side's
//! tensors are the ones scripts/make-test-models writes (VGG-16 preprocessing: 240x240 NHWC,
//! RGB / 255) for each photograph in ../shared/images; scripts/test fetches and makes them.

use dconv::io::image::{load_image, Layout};
use dconv::io::npy::read_npy;
use std::path::PathBuf;

#[test]
fn photographs_load_as_numpy_loads_them() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let numpy_inputs = repo.join("models/photos");
    let photos = repo.join("../shared/images");
    assert!(
        numpy_inputs.is_dir(),
        "{} is missing: run scripts/fetch-models and scripts/make-test-models (scripts/test does)",
        numpy_inputs.display()
    );
    let mut compared = 0;
    for entry in std::fs::read_dir(&photos).unwrap() {
        let photo = entry.unwrap().path();
        if photo.extension().is_none_or(|e| e != "png") {
            continue;
        }
        let stem = photo.file_stem().unwrap().to_string_lossy();
        let numpy = numpy_inputs.join(format!("{stem}.input.npy"));
        let (want_shape, want) = read_npy(&numpy).unwrap();
        let scale = (1.0f64 / 255.0) as f32;
        let (shape, got) = load_image(&photo, 240, 240, Layout::Nhwc, scale, None, None).unwrap();
        assert_eq!(shape, want_shape, "{stem}");
        let differing = got
            .iter()
            .zip(&want)
            .filter(|(g, w)| g.to_bits() != w.to_bits())
            .count();
        assert_eq!(
            differing, 0,
            "{stem}: {differing} elements differ from numpy's"
        );
        compared += 1;
    }
    assert!(compared > 0, "no PNG photographs in {}", photos.display());
}
