"""The generated demo set: raw data (CSV + letterboxed JPEGs) in the layout of the real hvc data, for `make demo`,
tests and the builder's dummy data. Apart from the dataset build, which never imports it.

    python -m tfds_person_attrs.demo.generate --out /tmp/hvc_demo --num_images 600
"""
