package catalogsync

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/peers"
)

// announceTimeout bounds how long a node waits for its own change to reach
// the catalog before it writes a hint.
const announceTimeout = 15 * time.Second

// Announce writes the hint for reg's entry at key once the catalog shows
// that entry as shown says (shown(nil) for "gone"), waiting up to
// announceTimeout: peers woken by the hint read the catalog, so it must
// have the change by then. consulNode is the local agent's node, where reg
// is registered. w, for a leave, is reg's signed withdrawal, carried in the
// hint; otherwise the hint carries the entry the catalog showed (Carry),
// so that readers need not read it.
func Announce(ctx context.Context, c *api.Client, key, consulNode string, reg Registration, shown func(*peers.Entry) bool, w *peers.Withdrawal) (Hint, error) {
	ctx, cancel := context.WithTimeout(ctx, announceTimeout)
	defer cancel()
	h := Hint{ConsulNode: consulNode, ServiceID: reg.ID(), Withdrawal: w}
	var seen *peers.Entry
	var err error
	h.Index, err = WaitInstance(ctx, c, reg.Service, h, func(e *peers.Entry) bool {
		seen = e
		return shown(e)
	})
	if err != nil {
		return h, fmt.Errorf("the catalog did not show the change of %s: %w", reg.ID(), err)
	}
	if seen != nil && w == nil {
		h.Carried = Carry(*seen)
	}
	return WriteHint(ctx, c, key, h)
}
