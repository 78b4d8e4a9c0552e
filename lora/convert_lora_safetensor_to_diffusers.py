"""Merge a kohya-format LoRA (.safetensors, e.g. from Civitai) into a Stable Diffusion 1.x model.

Writes a complete diffusers folder (StableDiffusionPipeline layout) that `inference.py --lora NAME` can use:

    python lora/convert_lora_safetensor_to_diffusers.py --base_model_path stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --checkpoint_path ~/Downloads/amechass.safetensors --dump_path lora/amechass --alpha 0.75

The logic lives in `ivmixed.lora`; this is its command line. Exit status: 0 done, 1 a failure while loading,
merging or saving, 2 a bad argument, path or LoRA file (found before any model loads), 128 + N for signal N
(Ctrl-C, SIGTERM, SIGHUP stop it and remove what it had written).
"""

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere, uninstalled

# Only torch-free modules here, so that --help and bad arguments answer at once; ivmixed.lora loads torch.
from ivmixed.errors import ModelLoadError  # noqa: E402
from ivmixed.lora_paths import DEFAULT_SCALE, TEXT_ENCODER_PREFIX, UNET_PREFIX, check_conversion  # noqa: E402
from ivmixed.stopping import RunStopped, StopSignals  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base_model_path", required=True,
                        help="Stable Diffusion 1.x folder or hub id (diffusers layout)")
    parser.add_argument("--checkpoint_path", required=True, help="the kohya-format LoRA .safetensors file")
    parser.add_argument("--dump_path", required=True, help="output folder; must not exist yet")
    parser.add_argument("--lora_prefix_unet", default=UNET_PREFIX, help="key prefix of the UNet layers in the file")
    parser.add_argument("--lora_prefix_text_encoder", default=TEXT_ENCODER_PREFIX,
                        help="key prefix of the text-encoder layers in the file")
    parser.add_argument("--alpha", type=float, default=DEFAULT_SCALE,
                        help="merge ratio: W += alpha * (file alpha / rank) * up @ down")
    parser.add_argument("--to_safetensors", action="store_true",
                        help="save the UNet and VAE as .safetensors instead of .bin (transformers 5 always "
                             "saves the text encoder as .safetensors)")
    parser.add_argument("--device", default="cpu", help="device to merge on, e.g. cpu or cuda")
    return parser


def _message(err: BaseException) -> str:
    return err.render(lambda name: "--" + name) if isinstance(err, ModelLoadError) else str(err)


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    signals = StopSignals()
    try:
        with signals:
            try:
                check_conversion(args.base_model_path, args.checkpoint_path, args.dump_path)
            except (ModelLoadError, OSError, ValueError) as err:
                parser.exit(2, f"error: {_message(err)}\n")
            logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
            from ivmixed.lora import convert_lora
            from ivmixed.runtime import quiet_libraries

            quiet_libraries()
            convert_lora(
                args.base_model_path, args.checkpoint_path, args.dump_path, alpha=args.alpha,
                lora_prefix_unet=args.lora_prefix_unet, lora_prefix_text_encoder=args.lora_prefix_text_encoder,
                to_safetensors=args.to_safetensors, device=args.device,
            )
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM or SIGHUP (RunStopped)
        signum = (err.signum if isinstance(err, RunStopped) else None) or signals.signum or 2
        print(f"error: stopped by signal {signum}; nothing was written at {args.dump_path}", file=sys.stderr)
        sys.exit(128 + signum)
    except (ModelLoadError, OSError, ValueError) as err:
        sys.exit(f"error: {_message(err)}")


if __name__ == "__main__":
    main()
