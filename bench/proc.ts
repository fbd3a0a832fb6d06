import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/**
 * A process and its descendants (Linux /proc): a target is measured with the processes it started, so the fast
 * lane's figures include its Next.js process (`npm start` forks it; server.ts).
 */
function tree(pid: number): number[] {
  const pids = [pid];
  for (let i = 0; i < pids.length; i++) {
    try {
      const children = readFileSync(`/proc/${pids[i]}/task/${pids[i]}/children`, 'utf8').trim();
      if (children) pids.push(...children.split(/\s+/).map(Number));
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

/** NaN when the process itself is unreadable; a descendant that exited meanwhile counts 0. */
function sumOverTree(pid: number, read: (pid: number) => number): number {
  return tree(pid).reduce((total, each, index) => {
    const value = read(each);
    return total + (index > 0 && Number.isNaN(value) ? 0 : value);
  }, 0);
}

/**
 * Resident set size of a process and its descendants in MiB, from /proc/<pid>/status (VmRSS; VmHWM, each
 * process's own peak, summed: at most what they held together), or NaN when unavailable.
 */
export function rssMiB(pid: number, field: 'VmRSS' | 'VmHWM' = 'VmRSS'): number {
  return sumOverTree(pid, (each) => ownRssMiB(each, field));
}

function ownRssMiB(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  try {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) / 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

let ticksPerSecond: number | undefined;

/** CPU time (user + system) a process and its descendants have used so far, in milliseconds, from /proc/<pid>/stat. */
export function cpuMs(pid: number): number {
  return sumOverTree(pid, ownCpuMs);
}

function ownCpuMs(pid: number): number {
  ticksPerSecond ??= (() => {
    try {
      return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      return 100;
    }
  })();
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may contain spaces) start at index 2 (state); utime/stime are 14/15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / ticksPerSecond;
  } catch {
    return Number.NaN;
  }
}
