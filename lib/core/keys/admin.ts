import type { AuditLog } from '../audit/audit';
import type { KeyRings, KeyVersion, Rotation, RotationResult } from './rings';

/**
 * Key administration as one actor performs it, for the admin API and the CLI alike: each action is done on
 * the key ring and then put on the audit trail (by fingerprint, never the value) before it is reported.
 */
export function keyAdmin(keyRings: KeyRings, audit: AuditLog, actor: string) {
  return {
    /** A key the ring held already, as it was: on the trail as `unchanged` (renewed: `renewed`, see KeyRings.add). */
    async add(upstream: string, value: string): Promise<KeyVersion> {
      const before = await keyRings.versionOf(upstream, value);
      const version = await keyRings.add(upstream, value);
      const outcome = before === null ? version.state : before.expiresAt === version.expiresAt ? 'unchanged' : 'renewed';
      await audit.recordAdmin({ action: 'key.add', actor, upstream, fingerprint: version.fingerprint, outcome });
      return version;
    },
    /** A repeated rotation (an earlier one, answered again) changed nothing: on the trail as `unchanged`. */
    async rotate(upstream: string, value: string, options: { rotationId?: string; skipCanary?: boolean }): Promise<RotationResult> {
      const before = await keyRings.versionOf(upstream, value);
      let rotation: RotationResult;
      try {
        rotation = await keyRings.rotate(upstream, value, { ...options, actor });
      } catch (error) {
        // A rotation adds its key before the canary and the switch: one refused after that (another admin's
        // rotation took its id meanwhile, the key was revoked while its canary ran) leaves the key in the ring, as
        // a version that never served. It goes on the trail, as any key added; one the ring held before (a
        // refusal before anything was added: its id taken, the key revoked) added nothing.
        const left = before === null ? await keyRings.versionOf(upstream, value).catch(() => null) : null;
        if (left) await audit.recordAdmin({ action: 'key.add', actor, upstream, fingerprint: left.fingerprint, outcome: left.state }).catch(() => {});
        throw error;
      }
      const outcome = rotation.repeated ? 'unchanged' : rotation.state;
      await audit.recordAdmin({ action: 'key.rotate', actor, upstream, fingerprint: rotation.to, rotationId: rotation.id, outcome });
      return rotation;
    },
    async rollback(rotationId: string, upstream?: string): Promise<Rotation> {
      const rotation = await keyRings.rollback(rotationId, upstream);
      await audit.recordAdmin({
        action: 'key.rollback',
        actor,
        upstream: rotation.upstream,
        fingerprint: rotation.to,
        rotationId: rotation.id,
        outcome: rotation.state,
      });
      return rotation;
    },
    async revoke(fingerprint: string): Promise<Array<{ upstream: string; version: string }>> {
      // Recorded upstream by upstream as each is revoked, so a revoke the store cuts short leaves those done on the trail.
      return keyRings.revoke(fingerprint, (upstream) => audit.recordAdmin({ action: 'key.revoke', actor, upstream, fingerprint, outcome: 'revoked' }));
    },
  };
}
