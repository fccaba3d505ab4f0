"""Makes the small font the PNG plots are labelled with: DejaVu Sans cut to printable ASCII and the
few symbols the plots print (± × → – … ° ≥ ≤). Run by hand; the output is committed.

    python3 tools/subset_font.py /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf \
        mura-train/assets/DejaVuSans-subset.ttf

DejaVu fonts are free to copy and modify (Bitstream Vera licence, see mura-train/assets/LICENSE-DejaVu).
"""

import sys

from fontTools import subset

src, dst = sys.argv[1], sys.argv[2]
text = "".join(chr(c) for c in range(0x20, 0x7F)) + "±×→–…°≥≤·"
options = subset.Options()
options.layout_features = []
options.hinting = False
options.name_IDs = ["*"]
font = subset.load_font(src, options)
s = subset.Subsetter(options)
s.populate(text=text)
s.subset(font)
subset.save_font(font, dst, options)
