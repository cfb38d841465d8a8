"""``python -m gfwlab`` and the ``gfwlab`` command: :func:`gfwlab.cli.main`, with the cyclic
collector paused while the command line's modules load and its parser is built. They make no
garbage for the collector to find, and its passes over them took about 6 ms of every start
(measured with ``gc.callbacks``). The command itself runs with the collector on
(:func:`gfwlab.cli.start`)."""

import gc


def main() -> None:
    gc.disable()
    from gfwlab.cli import main as run  # noqa: PLC0415  # after the collector is paused

    run()


if __name__ == "__main__":
    main()
