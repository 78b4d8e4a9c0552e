"""The guiding input files (ivmixed.guide_files): checked from their headers before any model loads, refused in one
line naming the setting, read into frames at the run's size by one resize rule. Fixtures are written here."""

import os
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from ivmixed import guide_files as gf
from ivmixed.errors import SettingError

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
           (128, 0, 0), (0, 128, 0), (0, 0, 128), (128, 128, 128)]


def flag(name):
    return "--" + name.replace("_", "-")


def refused(call, *args, key="init_video"):
    """The one-line refusal ``call(*args)`` raises, as the command line shows it; checks it names ``key``."""
    with pytest.raises(SettingError) as caught:
        call(*args)
    exc = caught.value
    text = exc.render(flag)
    assert "\n" not in text and "\r" not in text, text
    assert "{" + key + "}" in exc.template and flag(key) in text, text
    assert "Traceback" not in text
    return text


def write_mp4(path, frames):
    import imageio.v3 as iio

    iio.imwrite(path, np.asarray(frames, dtype=np.uint8), extension=".mp4", fps=8, codec="libx264",
                macro_block_size=1)
    return str(path)


def solid(colour, width, height):
    return np.broadcast_to(np.array(colour, np.uint8), (height, width, 3)).copy()


def split_image(width, height):
    """Left half red, right half blue."""
    array = solid((255, 0, 0), width, height)
    array[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(array)


def cover_then_crop(image, width, height):
    """The documented rule, computed independently: scale to cover (Lanczos), crop the centre."""
    w, h = image.size
    scale = max(width / w, height / h)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    scaled = image.resize(size, Image.LANCZOS)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def png_header_only(path, width, height):
    """A valid PNG whose IHDR says ``width`` x ``height`` with a tiny IDAT: a few dozen bytes on disk, gigabytes
    if anything decoded it."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return str(path)


# ----- good inputs


def test_mp4_is_checked_and_read_at_the_run_size(tmp_path):
    levels = [0, 50, 100, 150, 200, 250]
    path = write_mp4(tmp_path / "clip.mp4", [solid((v, v, v), 48, 40) for v in levels])
    info = gf.check_video(path, "init_video", 6)
    assert (info.width, info.height, info.kind, info.path) == (48, 40, "video", path)
    assert info.frames in (None, 6)
    frames = gf.read_video(path, 6, 32, 24)
    assert len(frames) == 6 and all(f.size == (32, 24) and f.mode == "RGB" for f in frames)
    centres = [f.getpixel((16, 12))[0] for f in frames]
    assert all(abs(c - v) <= 8 for c, v in zip(centres, levels)), centres
    assert len(gf.read_video(info, 4, 16, 16)) == 4  # the first frames, from a checked VideoInfo


@pytest.mark.parametrize("ext, codec", [(".webm", "libvpx-vp9"), (".mkv", "libx264"), (".mov", "libx264"),
                                        (".avi", "mpeg4")])
def test_other_containers(tmp_path, ext, codec):
    import imageio.v3 as iio

    path = str(tmp_path / f"clip{ext}")
    iio.imwrite(path, np.zeros((3, 40, 48, 3), np.uint8), extension=ext, fps=8, codec=codec, macro_block_size=1)
    info = gf.check_video(path, "init_video", 3)
    assert (info.width, info.height) == (48, 40)
    assert [f.size for f in gf.read_video(info, 3, 16, 16)] == [(16, 16)] * 3


def test_rotated_video_is_read_as_shown_without_a_warning(tmp_path, caplog):
    import subprocess

    import imageio_ffmpeg

    source = write_mp4(tmp_path / "clip.mp4", [split_image(48, 40)] * 2)
    rotated = str(tmp_path / "rotated.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-display_rotation", "90", "-i", source,
                    "-c", "copy", rotated], check=True, stdin=subprocess.DEVNULL)
    with caplog.at_level("WARNING"):
        info = gf.check_video(rotated, "init_video", 2)
        frames = gf.read_video(info, 2, 40, 48)
    assert (info.width, info.height) == (40, 48) and frames[0].size == (40, 48)
    assert not [r for r in caplog.records if "frame size" in r.getMessage()]


def test_gif_frames_in_order(tmp_path):
    path = tmp_path / "clip.gif"
    images = [Image.fromarray(solid(c, 20, 16)) for c in COLOURS[:5]]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
    info = gf.check_video(str(path), "init_video", 3)
    assert (info.frames, info.width, info.height, info.kind) == (5, 20, 16, "video")
    frames = gf.read_video(str(path), 5, 10, 8)
    assert [f.getpixel((5, 4)) for f in frames] == COLOURS[:5]


def test_frames_folder_is_sorted_numerically_and_ignores_other_files(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, colour in enumerate(COLOURS, start=1):  # frame1.png ... frame10.png: frame10 sorts last
        Image.fromarray(solid(colour, 24, 16)).save(folder / f"frame{i}.png")
    (folder / "notes.txt").write_text("not a frame")
    (folder / ".frame0.png").write_bytes(b"macOS resource fork, not an image")
    (folder / "sub.png").mkdir()
    assert gf.frame_files(str(folder)) == [f"frame{i}.png" for i in range(1, 11)]
    info = gf.check_video(str(folder), "init_video", 10)
    assert (info.frames, info.width, info.height, info.kind) == (10, 24, 16, "frames")
    frames = gf.read_video(str(folder), 10, 12, 8)
    assert [f.getpixel((6, 4)) for f in frames] == COLOURS
    assert [f.getpixel((6, 4)) for f in gf.read_video(info, 3, 12, 8)] == COLOURS[:3]


def test_natural_order():
    names = ["frame10.png", "frame2.png", "Frame1.png", "frame02.png", "a.png"]
    assert sorted(names, key=gf.natural_key) == ["a.png", "Frame1.png", "frame02.png", "frame2.png", "frame10.png"]


# ----- the resize rule


@pytest.mark.parametrize("source, target", [((100, 50), (32, 32)), ((50, 100), (32, 32)), ((100, 50), (40, 8)),
                                            ((37, 23), (64, 48)), ((64, 48), (64, 48))])
def test_resize_covers_then_crops_the_centre(tmp_path, source, target):
    image = split_image(*source)
    path = tmp_path / "split.png"
    image.save(path)
    got = gf.read_image(str(path), *target)
    assert got.size == target and got.mode == "RGB"
    assert np.array_equal(np.asarray(got), np.asarray(cover_then_crop(image, *target)))


def test_resize_keeps_the_centre_of_a_wide_image(tmp_path):
    path = tmp_path / "split.png"
    split_image(100, 50).save(path)
    got = np.asarray(gf.read_image(str(path), 32, 32)).astype(int)
    # scaled to 64x32 and cropped to columns 16..47: both halves meet in the middle, nothing is squeezed
    assert tuple(got[16, 0]) == (255, 0, 0) and tuple(got[16, 31]) == (0, 0, 255)
    assert tuple(got[16, 12]) == (255, 0, 0) and tuple(got[16, 19]) == (0, 0, 255)
    image = gf.read_image(str(path))
    assert image.size == (100, 50) and image.mode == "RGB"


def test_video_frames_follow_the_same_rule(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    image = split_image(100, 50)
    for i in range(3):
        image.save(folder / f"{i}.png")
    for frame in gf.read_video(str(folder), 3, 32, 32):
        assert np.array_equal(np.asarray(frame), np.asarray(cover_then_crop(image, 32, 32)))


def test_image_modes_become_rgb(tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(rgba)
    assert gf.read_image(str(rgba)).getpixel((0, 0)) == (10, 20, 30)
    grey16 = tmp_path / "grey16.png"
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(grey16)
    assert gf.read_image(str(grey16)).getpixel((0, 0)) == (255, 255, 255)
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(grey16)  # mid grey, scaled rather than clipped
    assert gf.read_image(str(grey16)).getpixel((0, 0)) == (128, 128, 128)


def test_animated_image_prompt_is_its_first_frame(tmp_path):
    path = tmp_path / "prompt.gif"
    images = [Image.fromarray(solid(c, 8, 8)) for c in COLOURS[:3]]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100)
    info = gf.check_image(str(path), "ip_adapter_image")
    assert (info.width, info.height, info.format) == (8, 8, "GIF")
    assert gf.read_image(str(path)).getpixel((4, 4)) == COLOURS[0]


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    Image.new("RGB", (40, 20), (200, 0, 0)).save(path, exif=exif)
    info = gf.check_image(str(path), "ip_adapter_image")
    assert (info.width, info.height) == (20, 40)
    assert gf.read_image(str(path)).size == (20, 40)


# ----- refusals


def test_too_few_frames_says_both_numbers(tmp_path):
    path = write_mp4(tmp_path / "short.mp4", [solid((v, v, v), 48, 40) for v in range(0, 240, 40)])
    text = refused(gf.check_video, path, "init_video", 8)
    assert "has 6 frames" in text and "needs 8" in text and "--num-frames" in text, text
    text = refused(gf.read_video, path, 7, 16, 16)
    assert "6" in text and "7" in text, text

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(solid(COLOURS[i], 8, 8)).save(folder / f"{i}.png")
    text = refused(gf.check_video, str(folder), "init_video", 5)
    assert "has 3 frames" in text and "needs 5" in text, text

    gif = tmp_path / "short.gif"
    Image.fromarray(solid(COLOURS[0], 8, 8)).save(gif)
    text = refused(gf.check_video, str(gif), "control_video", 2, key="control_video")
    assert "has 1 frame " in text and "needs 2" in text, text


def test_broken_videos_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(rng.bytes(20000))
    assert "does not decode as a video" in refused(gf.check_video, str(noise), "init_video", 2)

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    assert "does not decode as a video" in refused(gf.check_video, str(text), "init_video", 2)

    frames = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(20)]
    good = write_mp4(tmp_path / "good.mp4", frames)
    data = open(good, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    message = refused(gf.check_video, str(cut), "init_video", 20)
    assert "does not decode" in message or "has" in message, message

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert "is empty (0 bytes)" in refused(gf.check_video, str(empty), "init_video", 2)
    assert "is empty (0 bytes)" in refused(gf.read_video, str(empty), 2, 8, 8)

    missing = str(tmp_path / "missing.mp4")
    assert "does not exist" in refused(gf.check_video, missing, "init_video", 2)


def test_relative_missing_path_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = refused(gf.check_video, "nowhere.mp4", "init_video", 2)
    assert "does not exist" in text and str(tmp_path) in text, text


def test_unknown_extension_is_refused(tmp_path):
    for name in ("clip.txt", "photo.png", "noext"):
        path = tmp_path / name
        path.write_bytes(b"something")
        text = refused(gf.check_video, str(path), "init_video", 2)
        assert "is not a video this reads" in text and ".mp4" in text and "folder" in text, text


def test_frames_folder_refusals(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no frame images" in refused(gf.check_video, str(empty), "init_video", 1)
    (empty / "readme.txt").write_text("no frames here")
    assert "no frame images" in refused(gf.check_video, str(empty), "init_video", 1)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (16, 16)).save(mixed / "frame1.png")
    Image.new("RGB", (16, 16)).save(mixed / "frame2.png")
    Image.new("RGB", (20, 16)).save(mixed / "frame10.png")
    text = refused(gf.check_video, str(mixed), "init_video", 3)
    assert "different sizes" in text and "16x16" in text and "20x16" in text and "frame10.png" in text, text

    broken = tmp_path / "broken"
    broken.mkdir()
    Image.new("RGB", (16, 16)).save(broken / "1.png")
    (broken / "2.png").write_text("not a png")
    assert "2.png" in refused(gf.check_video, str(broken), "init_video", 2)

    large = tmp_path / "large"
    large.mkdir()
    Image.new("L", (9000, 2)).save(large / "1.png")
    assert "9000x2" in refused(gf.check_video, str(large), "init_video", 1)


def test_video_larger_than_max_side_is_refused(tmp_path):
    path = write_mp4(tmp_path / "wide.mp4", np.zeros((2, 16, gf.MAX_SIDE + 8, 3), np.uint8))
    text = refused(gf.check_video, path, "init_video", 2)
    assert f"{gf.MAX_SIDE + 8}x16" in text and str(gf.MAX_SIDE) in text, text


def test_bad_images_are_refused(tmp_path):
    text_file = tmp_path / "prompt.png"
    text_file.write_text("a text file, not an image\n")
    assert "is not a PNG, JPEG" in refused(gf.check_image, str(text_file), "ip_adapter_image", key="ip_adapter_image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert "is empty (0 bytes)" in refused(gf.check_image, str(empty), "ip_adapter_image", key="ip_adapter_image")
    missing = str(tmp_path / "missing.png")
    assert "does not exist" in refused(gf.check_image, missing, "ip_adapter_image", key="ip_adapter_image")
    assert "is a folder" in refused(gf.check_image, str(tmp_path), "ip_adapter_image", key="ip_adapter_image")
    assert "does not exist" in refused(gf.read_image, missing, key="ip_adapter_image")

    video = write_mp4(tmp_path / "clip.mp4", [solid((0, 0, 0), 16, 16)] * 2)
    assert "is not a PNG" in refused(gf.check_image, video, "ip_adapter_image", key="ip_adapter_image")

    cut = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(cut)
    cut.write_bytes(cut.read_bytes()[:600])
    gf.check_image(str(cut), "ip_adapter_image")  # the header is whole: the check passes, the read refuses
    assert "does not decode" in refused(gf.read_image, str(cut), key="ip_adapter_image")

    wide = tmp_path / "wide.png"
    Image.new("L", (gf.MAX_SIDE + 1, 1)).save(wide)
    assert f"{gf.MAX_SIDE + 1}x1" in refused(gf.check_image, str(wide), "ip_adapter_image", key="ip_adapter_image")


def test_huge_png_is_refused_from_its_header(tmp_path, monkeypatch):
    def never(self, *args, **kwargs):
        raise AssertionError("decoded the pixels of a 40000x40000 image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    monkeypatch.setattr(Image.Image, "load", never)
    for side in (40000, 12000):  # past Pillow's decompression-bomb limit, and under it but past MAX_SIDE
        path = png_header_only(tmp_path / f"huge{side}.png", side, side)
        assert os.path.getsize(path) < 200
        start = time.perf_counter()
        text = refused(gf.check_image, path, "ip_adapter_image", key="ip_adapter_image")
        refused(gf.read_image, path, 64, 64, key="ip_adapter_image")
        assert time.perf_counter() - start < 1.0
        assert str(gf.MAX_SIDE) in text, text
    folder = tmp_path / "frames"
    folder.mkdir()
    png_header_only(folder / "1.png", 40000, 40000)
    assert str(gf.MAX_SIDE) in refused(gf.check_video, str(folder), "init_video", 1)


def test_unprintable_path_stays_on_one_line(tmp_path):
    path = str(tmp_path / "a\nb.mp4")
    refused(gf.check_video, path, "init_video", 2)


# ----- identity


def test_file_identity_follows_the_content(tmp_path):
    path = tmp_path / "prompt.png"
    Image.fromarray(solid((1, 2, 3), 8, 8)).save(path)
    first = gf.file_identity(str(path))
    assert first.startswith("sha256:") and gf.file_identity(str(path)) == first
    data = bytearray(path.read_bytes())
    data[-20] ^= 1
    path.write_bytes(bytes(data))
    assert gf.file_identity(str(path)) != first

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(solid(COLOURS[i], 8, 8)).save(folder / f"f{i}.png")
    ident = gf.file_identity(str(folder))
    assert ident.startswith("frames-sha256:") and gf.file_identity(str(folder)) == ident
    (folder / "notes.txt").write_text("not a frame")
    assert gf.file_identity(str(folder)) == ident
    assert gf.file_identity(str(folder), frames=2) != ident
    Image.fromarray(solid(COLOURS[5], 8, 8)).save(folder / "f1.png")
    changed = gf.file_identity(str(folder))
    assert changed != ident
    os.rename(folder / "f2.png", folder / "f3.png")
    assert gf.file_identity(str(folder)) != changed
