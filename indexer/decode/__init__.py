"""Decoders behind one interface: PyAV (FFmpeg) on the CPU, PyNvVideoCodec (NVDEC) on a GPU."""

from indexer.decode.base import Decoder, FrameBatch, FrameSampler, VideoInfo, open_decoder

__all__ = ["Decoder", "FrameBatch", "FrameSampler", "VideoInfo", "open_decoder"]
