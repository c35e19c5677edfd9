package main

import (
	"github.com/urfave/cli/v2"

	"github.com/unionmount/unionmount/store"
)

// storeFlag names the image store, for every command that uses one.
var storeFlag = &cli.StringFlag{
	Name:        "store",
	Usage:       "image store `DIR`, an OCI image layout",
	EnvVars:     []string{"UNIONMOUNT_STORE"},
	DefaultText: store.DefaultDir(),
}
