package main

import (
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/unionmount/unionmount/mount"
	"github.com/unionmount/unionmount/store"
)

// storeDir is the store a command names, or the default.
func storeDir(c *cli.Context) string {
	if d := c.String("store"); d != "" {
		return d
	}
	return store.DefaultDir()
}

var containersCommand = &cli.Command{
	Name:  "containers",
	Usage: "list the container layers of image mounts",
	Description: `Lists the containers in the store: what "unionmount --image NAME MERGED"
made, a container layer (STORE/containers/ID/upper, its workdir beside it,
and its committed layers in that workdir) on the image's layers. A
container outlives its mount; mount it again with
   unionmount --image NAME STORE/containers/ID/upper MERGED
and remove it with "unionmount rm ID".`,
	Flags: []cli.Flag{storeFlag},
	Action: func(c *cli.Context) error {
		if c.NArg() != 0 {
			return usageError(c, "containers takes no arguments")
		}
		cs, err := mount.Containers(storeDir(c))
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(os.Stdout, 0, 8, 2, ' ', 0)
		fmt.Fprintln(w, "CONTAINER ID\tIMAGE\tCREATED\tSTATUS\tUPPER")
		for _, ct := range cs {
			status := "unmounted"
			if ct.Mounted {
				status = "mounted"
			}
			upper := "-"
			if ct.Upper {
				upper = ct.Dir + "/upper"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", ct.ID, ct.Image, ago(&ct.Created), status, upper)
		}
		return w.Flush()
	},
}

var rmCommand = &cli.Command{
	Name:      "rm",
	Usage:     "remove containers",
	ArgsUsage: "ID...",
	Description: `Removes each container, with its container layer and the layers committed
from it. A mounted container is refused. The image's layers stay in the
store (rmi removes images).`,
	Flags: []cli.Flag{storeFlag},
	Action: func(c *cli.Context) error {
		if c.NArg() == 0 {
			return usageError(c, "expected ID...")
		}
		for _, id := range c.Args().Slice() {
			if err := mount.RemoveContainer(storeDir(c), id); err != nil {
				return err
			}
			fmt.Println(id)
		}
		return nil
	},
}
