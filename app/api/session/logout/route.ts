import { logoutRoute } from '@/lib/next/api-routes';

export const runtime = 'nodejs';
export const dynamic = 'force-dynamic';
export { logoutRoute as POST };
