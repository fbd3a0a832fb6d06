import { adminAuditRoute } from '@/lib/next/api-routes';

export const runtime = 'nodejs';
export const dynamic = 'force-dynamic';
export { adminAuditRoute as GET };
