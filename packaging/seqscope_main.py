"""The PyInstaller bundle's entry point: the ``seqscope`` command as ``pip install`` gives it
(the window without a subcommand; ``seqscope trace|info|export-lstmvis``), plus
``--install-desktop [--uninstall]``, which adds the bundle to the desktop's application menu
(``packaging/install_desktop.sh BUNDLE/seqscope`` calls it)."""
import sys


def run(argv: list[str]) -> int:
    if argv[:1] == ["--install-desktop"]:
        from workbench.desktop import main as install_desktop

        return install_desktop(argv[1:])
    from engine.cli import main

    return main(argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
