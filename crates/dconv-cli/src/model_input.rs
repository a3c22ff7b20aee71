//! The input tensor of `run`, `bench`, `analyze` and `prune --report`: a .npy file, or a
//! photograph preprocessed as the model expects (size, layout, scale, mean, std given on the
//! command line).

use crate::Failure;
use dconv::io::image::{load_image, Layout};
use dconv::io::npy::read_npy;
use dconv::{Model, Tensor};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["input", "image"])))]
pub struct InputArgs {
    /// The input tensor (.npy, float32 or float64).
    #[arg(long, value_name = "X.npy")]
    input: Option<PathBuf>,
    /// A photograph (PNG or JPEG) to feed instead of a .npy; needs --size and --layout.
    #[arg(long, value_name = "PATH", requires_all = ["size", "layout"])]
    image: Option<PathBuf>,
    #[command(flatten)]
    feed: FeedArgs,
}

impl InputArgs {
    /// The named tensor to feed `model`, which must take exactly one input.
    pub fn load(&self, model: &Model) -> Result<(String, Tensor), Failure> {
        let source = match (&self.input, &self.image) {
            (Some(npy), _) => Source::Npy(npy),
            (None, Some(image)) => Source::Image(image),
            (None, None) => {
                return Err(Failure::Usage(
                    "give --input X.npy, or --image PATH with --size and --layout".into(),
                ))
            }
        };
        self.feed.load(model, source)
    }
}

/// A file that holds a model input.
pub enum Source<'a> {
    Npy(&'a Path),
    /// A photograph, preprocessed by [`FeedArgs`].
    Image(&'a Path),
}

impl<'a> Source<'a> {
    /// A .npy tensor if `path` ends in `.npy`, else a photograph.
    pub fn by_extension(path: &'a Path) -> Source<'a> {
        match path.extension() {
            Some(ext) if ext.eq_ignore_ascii_case("npy") => Source::Npy(path),
            _ => Source::Image(path),
        }
    }
}

/// How a file becomes the tensor a model is fed: the preprocessing of a photograph, and
/// the model input it feeds.
#[derive(clap::Args, Debug)]
pub struct FeedArgs {
    /// The model's input height and width, e.g. 224x224.
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    size: Option<(usize, usize)>,
    /// Where the model wants the colour channels: nchw or nhwc.
    #[arg(long, value_name = "L")]
    layout: Option<Layout>,
    /// Pixel values (0-255) are multiplied by this, e.g. 0.00392156862745098 for [0, 1].
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    scale: f32,
    /// Per-channel mean subtracted after scaling, as r,g,b.
    #[arg(long, value_name = "R,G,B", value_parser = parse_rgb)]
    mean: Option<[f32; 3]>,
    /// Per-channel standard deviation divided by after the mean, as r,g,b.
    #[arg(long, value_name = "R,G,B", value_parser = parse_rgb)]
    std: Option<[f32; 3]>,
    /// The model input to feed [default: the first].
    #[arg(long, value_name = "NAME")]
    input_name: Option<String>,
}

impl FeedArgs {
    /// The named tensor to feed `model`, which must take exactly one input, read from
    /// `source`.
    pub fn load(&self, model: &Model, source: Source) -> Result<(String, Tensor), Failure> {
        if model.inputs().len() != 1 {
            return Err(Failure::Usage(format!(
                "the model has {} inputs; dconv feeds one",
                model.inputs().len()
            )));
        }
        let name = match &self.input_name {
            Some(name) => name.clone(),
            None => model.inputs()[0].name.clone(),
        };
        let (shape, data) = match (source, self.size, self.layout) {
            (Source::Npy(npy), _, _) => read_npy(npy).map_err(|e| Failure::Usage(e.to_string()))?,
            (Source::Image(image), Some((height, width)), Some(layout)) => load_image(
                image, height, width, layout, self.scale, self.mean, self.std,
            )
            .map_err(Failure::from)?,
            (Source::Image(image), _, _) => {
                return Err(Failure::Usage(format!(
                    "{}: a photograph needs --size and --layout (or give a .npy)",
                    image.display()
                )))
            }
        };
        Ok((name, Tensor::from_f32(shape, data)?))
    }
}

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("'{s}' is not HxW (e.g. 224x224)"))?;
    let side = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("'{s}' is not HxW (e.g. 224x224)"))
    };
    Ok((side(h)?, side(w)?))
}

fn parse_rgb(s: &str) -> Result<[f32; 3], String> {
    let values: Vec<f32> = s
        .split(',')
        .map(|v| v.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("'{s}' is not three numbers r,g,b"))?;
    values
        .try_into()
        .map_err(|_| format!("'{s}' is not three numbers r,g,b"))
}
