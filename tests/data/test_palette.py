from seglab.data.palette import voc_palette


def test_voc_palette_holds_the_devkit_colours():
    palette = voc_palette()
    assert len(palette) == 256 and len(set(palette)) == 256
    # VOCdevkit's colour map: background, aeroplane, bicycle, bird, boat, person (15), tvmonitor (20)
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128),
                15: (192, 128, 128), 20: (0, 64, 128), 255: (224, 224, 192)}
    assert {i: palette[i] for i in expected} == expected
    assert voc_palette(21) == palette[:21]
