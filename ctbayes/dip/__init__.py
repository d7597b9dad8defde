"""Deep-image-prior reconstruction: the U-Net and its fit to one sinogram."""

from ctbayes.dip.fit import DIPConfig, DIPResult, build_network, fit_dip, image_scale, time_breakdown
from ctbayes.dip.unet import UNet

__all__ = ["DIPConfig", "DIPResult", "UNet", "build_network", "fit_dip", "image_scale",
           "time_breakdown"]
