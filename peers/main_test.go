package peers

import (
	"testing"

	"meshd.dev/meshd/internal/leakcheck"
)

// The parse workers and a first plan's writer must end with the plan.
func TestMain(m *testing.M) { leakcheck.Main(m) }
