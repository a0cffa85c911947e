package catalogsync

import (
	"testing"

	"meshd.dev/meshd/internal/leakcheck"
)

// The watches' goroutines must all end with their contexts.
func TestMain(m *testing.M) { leakcheck.Main(m) }
