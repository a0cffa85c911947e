package catalogsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/health"
	"meshd.dev/meshd/peers"
)

// announceTimeout bounds how long a node waits for its own change to reach
// the catalog before it writes a hint.
const announceTimeout = 15 * time.Second

// Announce writes the hint for reg's entry at key once the catalog shows
// that entry as shown says (shown(nil) for "gone"), waiting up to
// announceTimeout: peers woken by the hint read the catalog, so it must
// have the change by then. consulNode is the local agent's node, where reg
// is registered.
func Announce(ctx context.Context, c *api.Client, key, consulNode string, reg Registration, shown func(*peers.Entry) bool) (Hint, error) {
	ctx, cancel := context.WithTimeout(ctx, announceTimeout)
	defer cancel()
	h := Hint{ConsulNode: consulNode, ServiceID: reg.ID()}
	var err error
	if h.Index, err = WaitInstance(ctx, c, reg.Service, h, shown); err != nil {
		return h, fmt.Errorf("the catalog did not show the change of %s: %w", reg.ID(), err)
	}
	return h, WriteHint(ctx, c, key, h)
}

// Withdraw takes reg's entry out of the catalog for good: it deregisters
// it and deletes the node's health summary, and, with hints on (hintKey
// not empty), writes the hint that tells every other host at once, after
// the catalog stops showing the entry. It is all of leaving that touches
// Consul, for the running agent and for `meshd leave` when no agent runs.
// Only a failed deregistration is an error: the summary is for operators
// and the hint for speed (the watch brings the removal without it), so
// their failures are logged.
func Withdraw(ctx context.Context, c *api.Client, reg Registration, hintKey string, logger *slog.Logger) error {
	err := Deregister(ctx, c, reg.Node)
	if err == nil {
		logger.Info("deregistered", "service_id", reg.ID())
		if hintKey != "" {
			if h, err := announceGone(ctx, c, hintKey, reg); err != nil && !errors.Is(err, context.Canceled) {
				logger.Warn("no hint written", "err", err)
			} else if err == nil {
				logger.Debug("hint written", "key", hintKey, "service_id", h.ServiceID, "index", h.Index)
			}
		}
	}
	key := health.SummaryPrefix + reg.Node
	if _, derr := c.KV().Delete(key, (&api.WriteOptions{}).WithContext(ctx)); derr != nil {
		logger.Warn("health summary not deleted", "key", key, "err", derr)
	}
	return err
}

func announceGone(ctx context.Context, c *api.Client, key string, reg Registration) (Hint, error) {
	node, err := c.Agent().NodeName()
	if err != nil {
		return Hint{}, fmt.Errorf("the local agent's node name is unknown: %w", err)
	}
	return Announce(ctx, c, key, node, reg, func(e *peers.Entry) bool { return e == nil })
}
