"""What an H.264 or HEVC access unit says about itself: whether any other picture may refer to it.

Used by the NVDEC decoder to leave out frames no sample needs (`PacketPlan`): a packet is only
dropped if this says its picture is a non-reference one, so a frame other frames are built from is
never lost. Packets are Annex B (start-code delimited NAL units), as PyNvVideoCodec's demuxer hands
them (it converts MP4's length-prefixed form). The NAL unit headers are read, nothing else is parsed.
"""

from __future__ import annotations

HEVC_SUB_LAYER_NON_REFERENCE = frozenset({0, 2, 4, 6, 8, 10, 12, 14})
"""HEVC NAL unit types of pictures that no picture of their own temporal sub-layer refers to (TRAIL_N,
TSA_N, STSA_N, RADL_N, RASL_N, RSV_VCL_N10/12/14); pictures of higher sub-layers still may."""
HEVC_SPS = 33
START_CODE = b"\x00\x00\x01"


def nal_units(data: bytes) -> list[int]:
    """Offsets of the NAL unit headers in an Annex B buffer (the byte after each start code)."""
    out = []
    at = data.find(START_CODE)
    while at >= 0:
        out.append(at + 3)
        at = data.find(START_CODE, at + 3)
    return out


class ReferenceScanner:
    """Tells, from the first slice's NAL header, whether a coded picture can be left undecoded.

    H.264: a slice with nal_ref_idc 0 belongs to a picture no other picture refers to (all slices of a
    picture agree on that). HEVC: a sub-layer non-reference picture is safe to drop only in the highest
    temporal sub-layer of the stream, which its sequence parameter set gives (sps_max_sub_layers_minus1: read
    from the container's extradata, or from the packets); until an SPS has been seen nothing is dropped.
    Other codecs: nothing is dropped.
    """

    def __init__(self, codec: str, extradata: bytes | None = None):
        self.codec = codec
        self.top_sub_layer: int | None = None
        """HEVC: the stream's highest temporal sub-layer, from the last SPS seen (None until one is)."""
        if codec == "hevc" and extradata:
            self._hevc_parameter_sets(extradata)

    def _hevc_parameter_sets(self, extradata: bytes) -> None:
        """Read the SPS from the container's codec extradata: Annex B, or MP4's hvcC record (ISO/IEC 14496-15:
        22 bytes of stream facts, then arrays of parameter sets by NAL unit type, each NAL unit length-prefixed).
        Some demuxers (PyNvVideoCodec's among them) do not repeat the parameter sets in the packets."""
        if extradata.startswith(START_CODE) or extradata.startswith(b"\x00" + START_CODE):
            self._hevc(extradata)
            return
        if len(extradata) < 23:
            return
        at, arrays = 23, extradata[22]
        for _ in range(arrays):
            if at + 3 > len(extradata):
                return
            kind, count = extradata[at] & 0x3F, int.from_bytes(extradata[at + 1:at + 3], "big")
            at += 3
            for _ in range(count):
                size = int.from_bytes(extradata[at:at + 2], "big")
                nal = extradata[at + 2:at + 2 + size]
                if kind == HEVC_SPS and len(nal) > 2:
                    self.top_sub_layer = (nal[2] >> 1) & 0x07
                at += 2 + size

    def droppable(self, data: bytes) -> bool:
        if self.codec == "h264":
            return self._h264(data)
        if self.codec == "hevc":
            return self._hevc(data)
        return False

    @staticmethod
    def _h264(data: bytes) -> bool:
        for at in nal_units(data):
            if at >= len(data):
                break
            header = data[at]
            kind = header & 0x1F
            if kind in (1, 2):  # non-IDR slice, or its data partition A (which holds the slice header)
                return header & 0x60 == 0
            if kind == 5:  # IDR
                return False
        return False

    def _hevc(self, data: bytes) -> bool:
        for at in nal_units(data):
            if at + 2 >= len(data):
                break
            kind = (data[at] >> 1) & 0x3F
            if kind == HEVC_SPS:
                # after the 2-byte header: sps_video_parameter_set_id u(4), sps_max_sub_layers_minus1 u(3)
                self.top_sub_layer = (data[at + 2] >> 1) & 0x07
            elif kind < 32:  # the first slice of the picture
                temporal_id = (data[at + 1] & 0x07) - 1
                return kind in HEVC_SUB_LAYER_NON_REFERENCE and temporal_id == self.top_sub_layer
        return False
