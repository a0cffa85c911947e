package loop

import (
	"cmp"
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// Loop runs Reconcile whenever it is marked dirty. Set the fields, then
// call Run once; Mark and Do may be called from any goroutine.
type Loop struct {
	// Reconcile brings the world in line once. It returns when it must run
	// again at the latest (zero: no deadline) and whether it failed.
	Reconcile func(ctx context.Context) (next time.Time, err error)
	// Resync marks the loop dirty this often (zero: never); OnResync, when
	// set, runs first (to forget a model of the kernel, say).
	Resync   time.Duration
	OnResync func()
	// ResyncDelay puts the resync (OnResync and its reconcile) this long
	// after the tick: what came at the same moment is reconciled first (a
	// process continued after a stop sees every timer fire at once, and
	// its watches' answers a moment later). A tick during the delay is
	// the same resync.
	ResyncDelay time.Duration
	// MinBackoff and MaxBackoff bound the wait after a failed reconcile
	// (defaults 250 ms and 30 s).
	MinBackoff, MaxBackoff time.Duration

	once  sync.Once
	dirty chan struct{}
	calls chan call
}

type call struct {
	f    func(context.Context) error
	done chan struct{}
}

func (l *Loop) init() {
	l.once.Do(func() {
		l.dirty = make(chan struct{}, 1)
		l.calls = make(chan call)
	})
}

// Mark asks for a reconcile; it never blocks, and marks made before the
// reconcile starts coalesce into it.
func (l *Loop) Mark() {
	l.init()
	select {
	case l.dirty <- struct{}{}:
	default:
	}
}

// Do runs f on the loop's goroutine between two reconciles and returns
// once it ran, or with ctx's error if the loop did not take it first. If f
// returns an error, Run returns that error after f: the loop ends.
func (l *Loop) Do(ctx context.Context, f func(ctx context.Context) error) error {
	l.init()
	c := call{f: f, done: make(chan struct{})}
	select {
	case l.calls <- c:
	case <-ctx.Done():
		return ctx.Err()
	}
	<-c.done
	return nil
}

// Run reconciles once at start and then whenever marked, at a deadline or
// after a backoff, until ctx is done (it returns nil) or a function run
// through Do returns an error (it returns that).
func (l *Loop) Run(ctx context.Context) error {
	l.init()
	var resync <-chan time.Time
	if l.Resync > 0 {
		t := time.NewTicker(l.Resync)
		defer t.Stop()
		resync = t.C
	}
	wake := time.NewTimer(time.Hour)
	wake.Stop()
	defer wake.Stop()
	failures := 0
	var resyncWake <-chan time.Time
	l.Mark()
	for {
		select {
		case <-ctx.Done():
			return nil
		case c := <-l.calls:
			err := c.f(ctx)
			close(c.done)
			if err != nil {
				return err
			}
			continue
		case <-resync:
			if l.ResyncDelay <= 0 {
				l.resync()
			} else if resyncWake == nil {
				resyncWake = time.After(l.ResyncDelay)
			}
			continue
		case <-resyncWake:
			resyncWake = nil
			l.resync()
			continue
		case <-wake.C:
			l.Mark()
			continue
		case <-l.dirty:
		}
		next, err := l.Reconcile(ctx)
		if err != nil {
			failures++
			next = Earliest(next, time.Now().Add(Backoff(failures, cmp.Or(l.MinBackoff, 250*time.Millisecond), cmp.Or(l.MaxBackoff, 30*time.Second))))
		} else {
			failures = 0
		}
		wake.Stop()
		if !next.IsZero() {
			wake.Reset(max(time.Until(next), 0))
		}
	}
}

// resync runs OnResync and marks the loop.
func (l *Loop) resync() {
	if l.OnResync != nil {
		l.OnResync()
	}
	l.Mark()
}

// Earliest is the earliest of deadlines, zero meaning none.
func Earliest(ts ...time.Time) time.Time {
	var first time.Time
	for _, t := range ts {
		if first.IsZero() || !t.IsZero() && t.Before(first) {
			first = t
		}
	}
	return first
}

// Backoff is capped exponential backoff with full jitter: a random wait in
// [lo, lo*2^(n-1)] capped at hi, so that a fleet that failed at the same
// moment does not retry at the same moment. n counts failures from 1.
func Backoff(n int, lo, hi time.Duration) time.Duration {
	ceil := lo
	for i := 1; i < n && ceil < hi; i++ {
		ceil *= 2
	}
	ceil = min(ceil, hi)
	if ceil <= lo {
		return lo
	}
	return lo + rand.N(ceil-lo+1)
}
