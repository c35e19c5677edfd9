package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// New returns the unionmount application. Mounting is its default action,
// so that "unionmount LOWER UPPER MERGED" and the mount.fuse3 helper call
// "unionmount SOURCE MERGED -o OPTS" need no command word; a lower named
// like a command (umount, unmount) is written ./umount.
func New() *cli.App {
	umountCommand.OnUsageError = onUsageError
	return &cli.App{
		Name:        "unionmount",
		Usage:       mountUsage,
		UsageText:   mountUsageText,
		Description: mountDescription,
		Flags:       mountFlags,
		Action:      mountAction,
		Commands:    []*cli.Command{umountCommand},
		HideVersion: true,
		// Positional arguments are directories: no "help" or "h"
		// command may capture one. --help remains.
		HideHelpCommand: true,
		OnUsageError:    onUsageError,
		// -o values are mount(8) option lists; only mount.Parse splits
		// them.
		DisableSliceFlagSeparator: true,
	}
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
