"""Convert torchvision ResNet-34 weights into a jkt teacher artifact.

    python -m experiments.import_torchvision --weights resnet34.pth --out teachers/resnet34

Takes seconds; ``.safetensors`` weights need no PyTorch.
"""

import argparse

import jax

from jkt import checkpoint, cli, torchvision_import


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help=".pth, .pt or .safetensors file")
    parser.add_argument("--out", required=True, help="teacher artifact directory to write")
    parser.add_argument("--num-classes", type=int, default=None, help="default: from fc")
    parser.add_argument("--dataset", default="imagenet")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    def convert(a):
        path = torchvision_import.import_resnet34(
            a.weights, a.out, num_classes=a.num_classes, dataset=a.dataset,
            overwrite=a.overwrite)
        teacher = checkpoint.restore_teacher(path, expect_arch="resnet34")
        n = sum(x.size for x in jax.tree.leaves(teacher.variables["params"]))
        print(f"wrote {path} ({n:,} parameters, {teacher.meta.num_classes} classes)")

    cli.run(convert, args, errors=(ImportError,))


if __name__ == "__main__":
    main()
