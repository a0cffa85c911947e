// Command meshd is the WireGuard mesh provisioning agent. main only wires
// the packages together; see the README for the commands.
package main

import (
	"errors"
	"fmt"
	"os"

	"meshd.dev/meshd/config"
	"meshd.dev/meshd/keystore"
)

// exitError carries an exit status: 2 for bad input (configuration, a key
// file with a bad mode), 1 for everything else.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usage marks err as bad input.
func usage(err error) error { return &exitError{code: 2, err: err} }

func main() {
	err := newRootCmd().Execute()
	if err == nil {
		return
	}
	if !errors.Is(err, errSilent) {
		fmt.Fprintln(os.Stderr, "meshd: "+err.Error())
	}
	var ee *exitError
	var ce *config.Error
	switch {
	case errors.As(err, &ee):
		os.Exit(ee.code)
	case errors.As(err, &ce), errors.Is(err, keystore.ErrInsecureMode):
		os.Exit(2)
	}
	os.Exit(1)
}
