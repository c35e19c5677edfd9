package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// New returns the unionmount application. Mounting is its default action,
// so that "unionmount LOWER UPPER MERGED" and the mount.fuse3 helper call
// "unionmount SOURCE MERGED -o OPTS" need no command word; a lower named
// like a command (umount, unmount) is written ./umount.
func New() *cli.App {
	app := &cli.App{
		Name:        "unionmount",
		Usage:       mountUsage,
		UsageText:   mountUsageText,
		Description: mountDescription,
		Flags:       mountFlags,
		Action:      mountAction,
		Commands:    []*cli.Command{umountCommand, commitCommand, diffCommand, layersCommand, whichCommand, loadCommand, importCommand, imagesCommand, historyCommand, rmiCommand, saveCommand, exportCommand, containersCommand, rmCommand},
		HideVersion: true,
		// Positional arguments are directories: no "help" or "h"
		// command may capture one. --help remains.
		HideHelpCommand: true,
		OnUsageError:    onUsageError,
		// -o values are mount(8) option lists; only mount.Parse splits
		// them.
		DisableSliceFlagSeparator: true,
	}
	for _, c := range app.Commands {
		c.OnUsageError = onUsageError
	}
	return app
}

// onUsageError makes a bad flag a one-line error, printed by main, instead
// of an error followed by the whole help text.
func onUsageError(c *cli.Context, err error, _ bool) error {
	return usageError(c, err.Error())
}

// usageError names the command and points to its help.
func usageError(c *cli.Context, msg string) error {
	return fmt.Errorf("%s (see %s --help)", msg, c.Command.HelpName)
}

// flagsFirst moves the flags of a subcommand that follow its positional
// arguments in front of them, so that "unionmount commit MERGED -m MSG"
// works like "unionmount commit -m MSG MERGED" (urfave/cli stops parsing
// flags at the first positional argument). "--" ends the flags.
func flagsFirst(app *cli.App, args []string) []string {
	if len(args) < 3 {
		return args
	}
	cmd := app.Command(args[1])
	if cmd == nil {
		return args
	}
	takesValue := map[string]bool{}
	for _, f := range cmd.Flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			takesValue[n] = !isBool
		}
	}
	var flags, pos []string
	rest := args[2:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if a == "--" {
			pos = append(pos, rest[i:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			pos = append(pos, a)
			continue
		}
		name := strings.TrimLeft(a, "-")
		hasValue := strings.Contains(name, "=")
		name, _, _ = strings.Cut(name, "=")
		flags = append(flags, a)
		if takesValue[name] && !hasValue && i+1 < len(rest) {
			flags = append(flags, rest[i+1])
			i++
		}
	}
	out := append([]string{args[0], args[1]}, flags...)
	return append(out, pos...)
}
