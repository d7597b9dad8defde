"""Deep-image-prior reconstruction: the U-Net, its fit to one sinogram, and warm-started
refits (the design loop's)."""

from ctbayes.dip.fit import (DIPConfig, DIPFit, DIPResult, build_network, fit_dip, image_scale,
                             refit, time_breakdown)
from ctbayes.dip.unet import UNet

__all__ = ["DIPConfig", "DIPFit", "DIPResult", "UNet", "build_network", "fit_dip",
           "image_scale", "refit", "time_breakdown"]
