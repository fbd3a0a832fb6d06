import { TableLoading } from '../table-loading';

export default function Loading() {
  return <TableLoading />;
}
